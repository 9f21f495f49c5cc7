"""The local generator on a real (tiny, random) model: one reply per prompt, in order, the same on a rerun."""

import pytest

from hone.synth.local import Completer, LocalSettings
from tests.tiny import make_causal_model


def test_replies_come_in_prompt_order_and_repeat_under_the_same_seed(tmp_path):
    model = make_causal_model(tmp_path / "llama")
    completer = Completer(LocalSettings(str(model), max_new_tokens=4, batch_size=2, dtype="float32"))
    prompts = ["a b", "c d e", "f", "g h"]
    first = completer.complete(prompts, seed=3)
    assert len(first) == 4 and all(isinstance(r, str) for r in first)
    assert completer.complete(prompts, seed=3) == first
    assert completer.complete(prompts[2:], seed=3 + 2) == first[2:]  # a shard gives what the whole batch gave it


@pytest.mark.slow
def test_a_pool_of_actors_deals_out_the_prompts_and_answers_in_order(tmp_path, local_ray):
    from hone.synth.local import LocalPool

    model = make_causal_model(tmp_path / "llama")
    settings = LocalSettings(str(model), max_new_tokens=4, batch_size=2, temperature=0.0, dtype="float32")
    pool = LocalPool(settings, num_workers=2, cpus=1, gpus=0)
    try:
        prompts = [f"p{i} q r" for i in range(5)]
        replies = pool.generate(prompts)
        greedy = Completer(settings).complete(prompts, seed=0)
    finally:
        pool.shutdown()
    assert replies == greedy  # greedy: the same replies whichever actor wrote them
