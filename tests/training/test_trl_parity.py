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


def test_trl_gradient_under_grad_accum_4_is_the_global_token_mean_hone_trains_on(tmp_path):
    """TRL (transformers' num_items_in_batch) accumulates 4 micro-batches of 2 rows into the gradient of the
    8 rows' summed loss over their total target count: the loss hone's loop takes for any split of the
    global batch (tests/e2e/test_batch_arithmetic.py). Rows of 2-4 letters, so micro-batch means would differ."""
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "m"))
    rows = copy_rows(8, seed=5)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"), completion_only_loss=True, per_device_train_batch_size=2,
        gradient_accumulation_steps=4, max_length=64, report_to=[], use_cpu=True,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 4, torch.device("cpu"))
    assert len(batches) == 4 and len({int((b["labels"][:, 1:] != -100).sum()) for b in batches}) > 1
    model.zero_grad()
    for batch in batches:
        trainer.training_step(model, batch, num_items)
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    examples, _ = build_supervised([{**r, "_source": str(i)} for i, r in enumerate(rows)], "prompt_completion", tok, 64)
    batch = collate(examples, tok.pad_token_id)
    batch.pop("num_real_tokens")
    model.zero_grad()
    loss_sum, n = forward_loss_sum(model, batch, "causal")
    assert int(n) == int(num_items)
    mean_loss(loss_sum, n).backward()
    for name, grad in trl_grads.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-5), name
