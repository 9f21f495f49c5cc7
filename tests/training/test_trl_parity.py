"""hone's supervised loss equals TRL SFTTrainer's completion-only loss on the same rows and model."""

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from hone.training.batches import collate
from hone.training.forward import forward_loss_sum
from hone.training.losses import mean_loss
from hone.training.tokens import build_supervised
from tests.tiny import copy_rows, make_causal_model, make_tokenizer


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_sft_loss_matches_trl_completion_only_loss(tmp_path, label_smoothing):
    """Also with label smoothing: train.label_smoothing is transformers' label_smoothing_factor."""
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "m")).eval()
    rows = copy_rows(6, seed=3)

    examples, _ = build_supervised([{**r, "_source": str(i)} for i, r in enumerate(rows)], "prompt_completion", tok, 64)
    batch = collate(examples, tok.pad_token_id)
    batch.pop("num_real_tokens")
    with torch.no_grad():
        hone_loss = float(mean_loss(*forward_loss_sum(model, batch, "causal", label_smoothing)))

    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        completion_only_loss=True,
        per_device_train_batch_size=len(rows),
        max_length=64,
        report_to=[],
        use_cpu=True,
        label_smoothing_factor=label_smoothing,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    trl_batch = next(iter(trainer.get_train_dataloader()))
    assert trl_batch["input_ids"].shape == batch["input_ids"].shape
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, trl_batch))
    assert abs(hone_loss - trl_loss) < 1e-5, (hone_loss, trl_loss)
