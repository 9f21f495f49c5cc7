import math

import torch

from hone.training.losses import (
    IGNORE,
    causal_lm_loss_sum,
    kept_lm_loss_sum,
    lr_multiplier,
    mask_tokens,
    masked_lm_loss_sum,
    mean_loss,
    target_positions,
)


def test_causal_loss_matches_hand_computation():
    # Vocabulary of 2, uniform logits except one confident position.
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 3/4 at position 1
    labels = torch.tensor([[IGNORE, 0, 1]])  # position 0 predicts label 0 (p=1/2), position 1 predicts 1 (p=3/4)
    loss_sum, n = causal_lm_loss_sum(logits, labels)
    assert int(n) == 2
    assert torch.isclose(loss_sum, torch.tensor(-math.log(0.5) - math.log(0.75)))
    assert torch.isclose(mean_loss(loss_sum, n), loss_sum / 2)


def test_ignored_labels_count_for_nothing():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), IGNORE)
    loss_sum, n = causal_lm_loss_sum(logits, labels)
    assert int(n) == 0 and float(loss_sum) == 0.0
    assert float(mean_loss(loss_sum, n)) == 0.0


def test_loss_on_kept_positions_equals_the_full_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 11)
    labels = torch.full((3, 9), IGNORE)
    labels[0, 6:] = torch.tensor([1, 2, 3])  # answers at different places in each row, like sft rows
    labels[1, 3:5] = torch.tensor([4, 5])
    labels[2, 8] = 6
    positions = target_positions(labels)
    assert positions.tolist() == [2, 3, 5, 6, 7]  # position t predicts labels[:, t + 1]
    kept = kept_lm_loss_sum(logits[:, positions], labels, positions)
    full = causal_lm_loss_sum(logits, labels)
    assert int(kept[1]) == int(full[1]) == 6
    assert torch.isclose(kept[0], full[0])


def test_label_smoothing_matches_hand_computation_and_zero_is_plain_cross_entropy():
    # Vocabulary of 4, one target with p = 1/2 on the label and 1/6 on each other token.
    logits = torch.log(torch.tensor([[[0.5, 1 / 6, 1 / 6, 1 / 6], [0.25, 0.25, 0.25, 0.25]]]))
    labels = torch.tensor([[0, IGNORE]])
    plain, n = masked_lm_loss_sum(logits, labels)
    assert int(n) == 1 and torch.isclose(plain, torch.tensor(-math.log(0.5)))
    assert torch.equal(masked_lm_loss_sum(logits, labels, 0.0)[0], plain)
    # target: 0.9 on the label plus 0.1 / 4 on every token (the label included); ignored rows still count 0
    smoothed, n = masked_lm_loss_sum(logits, labels, 0.1)
    expected = -(0.9 + 0.025) * math.log(0.5) - 3 * 0.025 * math.log(1 / 6)
    assert int(n) == 1 and torch.isclose(smoothed, torch.tensor(expected))
    # the causal and kept variants pass it on
    causal = torch.cat([torch.zeros(1, 1, 4), logits[:, :1], torch.zeros(1, 1, 4)], dim=1)  # position 1 predicts token 2
    shifted = torch.tensor([[IGNORE, IGNORE, 0]])
    assert torch.isclose(causal_lm_loss_sum(causal, shifted, 0.1)[0], smoothed)
    positions = target_positions(shifted)
    assert torch.isclose(kept_lm_loss_sum(causal[:, positions], shifted, positions, 0.1)[0], smoothed)


def test_masked_loss_uses_unshifted_positions():
    logits = torch.zeros(1, 2, 4)
    labels = torch.tensor([[2, IGNORE]])
    loss_sum, n = masked_lm_loss_sum(logits, labels)
    assert int(n) == 1 and torch.isclose(loss_sum, torch.tensor(math.log(4.0)))


def test_mask_tokens_targets_only_maskable_positions_reproducibly():
    ids = torch.arange(10, 1010).reshape(10, 100)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    a = mask_tokens(ids, maskable, 0.15, mask_token_id=4, vocab_size=50, generator=torch.Generator().manual_seed(1))
    b = mask_tokens(ids, maskable, 0.15, mask_token_id=4, vocab_size=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    masked, labels = a
    targets = labels != IGNORE
    assert not targets[:, 0].any()
    assert 0.10 < targets.float().mean() < 0.20
    assert torch.equal(labels[targets], ids[targets])
    replaced = (masked == 4) & targets
    assert 0.7 < replaced.sum() / targets.sum() < 0.9
    assert torch.equal(masked[~targets], ids[~targets])


def test_lr_schedule_warmup_then_decay():
    assert lr_multiplier(0, 4, 20, "cosine", 0.0) == 0.25
    assert lr_multiplier(3, 4, 20, "cosine", 0.0) == 1.0
    assert lr_multiplier(4, 4, 20, "cosine", 0.0) == 1.0
    assert math.isclose(lr_multiplier(12, 4, 20, "cosine", 0.0), 0.5)
    assert math.isclose(lr_multiplier(20, 4, 20, "linear", 0.1), 0.1)
    assert math.isclose(lr_multiplier(12, 4, 20, "linear", 0.0), 0.5)
    assert lr_multiplier(15, 0, 20, "constant", 0.0) == 1.0


def test_a_micro_batchs_target_count_is_known_before_its_forward_pass(tmp_path):
    """The step's global target count is summed before any loss is computed; it must be the count the
    loss itself returns, for causal and masked batches and for preference pairs."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from hone.training.batches import apply_mlm_masking, collate
    from hone.training.forward import forward_loss_sum, step_target_count
    from tests.tiny import make_causal_model, make_masked_model

    causal = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "c"))
    rows = [[5, 6, 7, 8], [5, 9], [5, 6, 7]]
    examples = [{"input_ids": r, "labels": [IGNORE] + r[1:]} for r in rows]
    batch = collate(examples, 0)
    batch.pop("num_real_tokens")
    _, n = forward_loss_sum(causal, batch, "causal")
    assert step_target_count(batch, "causal", "sft") == int(n) == 6

    masked = AutoModelForMaskedLM.from_pretrained(make_masked_model(tmp_path / "m"))
    plain = collate([{"input_ids": r, "special_mask": [0] * len(r)} for r in rows], 0)
    plain.pop("num_real_tokens")
    batch = apply_mlm_masking(plain, 0.5, 4, 32, seed=1)
    _, n = forward_loss_sum(masked, batch, "masked")
    assert step_target_count(batch, "masked", "pretrain") == int(n) > 0

    assert step_target_count({"pair_mask": torch.tensor([1.0, 1.0, 0.0])}, "causal", "dpo") == 2
