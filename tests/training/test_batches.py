from hone.training.batches import collate, example_indices, steps_per_epoch
from hone.training.losses import IGNORE


def indices_for_epoch(epoch: int, n: int, micro: int, accum: int, world: int, seed: int = 7) -> list[int]:
    per_epoch = steps_per_epoch(n, micro * accum * world)
    seen = []
    for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
        for m in range(accum):
            for rank in range(world):
                seen += example_indices(step, m, rank, n, seed, micro, accum, world)
    return seen


def test_each_example_seen_once_per_epoch_across_ranks():
    seen = indices_for_epoch(0, n=48, micro=3, accum=2, world=2)
    assert sorted(seen) == list(range(48))
    second = indices_for_epoch(1, n=48, micro=3, accum=2, world=2)
    assert sorted(second) == list(range(48)) and second != seen  # reshuffled each epoch


def test_order_is_a_pure_function_of_seed_and_position():
    a = example_indices(5, 1, 1, 100, 3, 4, 2, 2)
    assert a == example_indices(5, 1, 1, 100, 3, 4, 2, 2)
    assert a != example_indices(5, 1, 1, 100, 4, 4, 2, 2)


def test_partial_last_batch_is_dropped():
    assert steps_per_epoch(50, 16) == 3
    seen = indices_for_epoch(0, n=50, micro=4, accum=2, world=2)
    assert len(seen) == 48 and len(set(seen)) == 48


def test_collate_pads_right_and_masks_padding():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert int(batch["num_real_tokens"]) == 4


def test_collate_packed_has_no_mask_and_restarting_positions():
    packed = {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, IGNORE], "position_ids": [0, 1, 0]}
    batch = collate([packed, {"input_ids": [4], "labels": [IGNORE], "position_ids": [0]}], pad_id=0)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
