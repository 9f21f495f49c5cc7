"""hone's DPO loss equals TRL DPOTrainer's sigmoid loss on the same rows, policy and reference models."""

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from hone.training.batches import collate_pairs
from hone.training.config import load_config
from hone.training.forward import pair_scores, step_loss_sum
from hone.training.losses import mean_loss
from hone.training.tokens import build_preference
from tests.tiny import make_causal_model, make_tokenizer, preference_rows

BETA = 0.3


def trl_rows(rows: list[dict]) -> list[dict]:
    """TRL wants chat replies as message lists; hone also takes a plain string there (one assistant turn)."""
    if isinstance(rows[0]["prompt"], str):
        return rows
    return [{**r, "chosen": _reply(r["chosen"]), "rejected": _reply(r["rejected"])} for r in rows]


def _reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("chat", [False, True], ids=["text", "chat"])
def test_dpo_loss_matches_trl_sigmoid_loss(tmp_path, chat):
    tok = make_tokenizer()
    # Different weights for policy and reference, so the margins (and the loss) are far from log 2.
    policy = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "policy", seed=1)).eval()
    reference = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "ref", seed=2)).eval()
    rows = preference_rows(6, seed=3, chat=chat)

    examples, _ = build_preference([{**r, "_source": str(i)} for i, r in enumerate(rows)], tok, 64, "dpo")
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_scores(reference, collate_pairs(examples, tok.pad_token_id), "dpo")
    examples = [{**e, "ref_logps": [c, r]} for e, c, r in zip(examples, ref_chosen.tolist(), ref_rejected.tolist(), strict=True)]
    batch = collate_pairs(examples, tok.pad_token_id)
    cfg = load_config(None, ["mode=dpo", "model.source=/m", "data.train=[x]", f"dpo.beta={BETA}"])
    with torch.no_grad():
        hone_loss = float(mean_loss(*step_loss_sum(policy, batch, "causal", cfg)))

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        per_device_train_batch_size=len(rows),
        max_length=64,
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast, which it applies to the reference; hone runs fp32 on CPU
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(trl_rows(rows)),
        processing_class=tok,
    )
    trl_batch = next(iter(trainer.get_train_dataloader()))
    assert trl_batch["input_ids"].shape == batch["input_ids"].shape
    assert sorted(map(tuple, trl_batch["input_ids"].tolist())) == sorted(map(tuple, batch["input_ids"].tolist()))
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(policy, trl_batch))
    print(f"hone {hone_loss:.8f} trl {trl_loss:.8f} diff {abs(hone_loss - trl_loss):.2e}")
    assert abs(hone_loss - 0.6931) > 0.01  # the reference really differs from the policy
    assert abs(hone_loss - trl_loss) < 1e-5, (hone_loss, trl_loss)
