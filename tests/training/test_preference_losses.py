"""DPO and reward-model losses against values computed by hand."""

import math

import torch

from hone.training.batches import collate_pairs
from hone.training.losses import bradley_terry_loss, completion_logps, dpo_loss, dpo_margin


def test_completion_logps_sums_only_completion_tokens():
    # Vocabulary of 2. Position t predicts token t + 1; the completion is tokens 2 and 3.
    logits = torch.zeros(1, 4, 2)
    logits[0, 1] = torch.tensor([math.log(3.0), 0.0])  # p(token 0) = 3/4 at position 1
    input_ids = torch.tensor([[1, 1, 0, 1]])
    completion_mask = torch.tensor([[0, 0, 1, 1]])
    # Token 2 (=0) from position 1: log 3/4. Token 3 (=1) from position 2 (uniform): log 1/2. Token 1 is prompt.
    expected = math.log(0.75) + math.log(0.5)
    assert torch.isclose(completion_logps(logits, input_ids, completion_mask), torch.tensor([expected])).all()


def test_dpo_margin_and_loss_by_hand():
    # Policy gains 2 nats on chosen and loses 1 on rejected relative to the reference: margin = beta * 3.
    margin = dpo_margin(torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.5)
    assert torch.isclose(margin, torch.tensor([1.5]))
    assert torch.isclose(dpo_loss(margin), torch.tensor([math.log(1 + math.exp(-1.5))]))


def test_dpo_loss_is_log_two_while_policy_equals_reference():
    logps = torch.tensor([-4.0, -9.0])
    margin = dpo_margin(logps, logps.flip(0), logps, logps.flip(0), beta=0.1)
    assert torch.equal(margin, torch.zeros(2))
    assert torch.allclose(dpo_loss(margin), torch.full((2,), math.log(2.0)))


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    expected = torch.tensor([math.log(1 + math.exp(-1.0)), math.log(2.0)])
    assert torch.allclose(bradley_terry_loss(chosen, rejected), expected)


def test_collate_pairs_stacks_chosen_then_rejected():
    examples = [
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
        {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11], "pair_weight": [0.0]},
    ]
    batch = collate_pairs(examples, pad_id=0)
    # The example from TRL's DataCollatorForPreference docstring.
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 0, 0], [1, 2, 3, 6, 0], [7, 8, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 1, 0]]
    assert batch["pair_mask"].tolist() == [1.0, 0.0] and int(batch["num_real_tokens"]) == 5 + 3 + 4 + 4
