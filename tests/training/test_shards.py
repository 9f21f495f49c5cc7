"""Splitting an evaluation over ranks: equal shares padded with items that count for nothing, and the
shares put back in the original order."""

from hone.training.shards import ALONE, Shard, blank, interleave


def test_shares_are_equal_length_and_interleave_back_in_order():
    items = list(range(7))
    for world in (1, 2, 3, 4, 8):
        shares = [Shard(rank, world).take(items, -1) for rank in range(world)]
        assert len({len(s) for s in shares}) == 1  # every rank runs the same number of batches
        assert sorted(x for s in shares for x in s if x >= 0) == items
        assert interleave(shares, len(items)) == items
    assert ALONE.take(items, -1) == items and ALONE.sum(1.0, 2.0) == [1.0, 2.0]


def test_padding_counts_for_nothing_in_every_kind_of_example():
    sft = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    assert blank(sft)["labels"] == [-100, -100, -100]
    pair = {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}
    assert blank(pair)["pair_weight"] == [0.0]
    text = {"input_ids": [5, 6], "special_mask": [0, 0]}
    assert blank(text)["special_mask"] == [1, 1]  # a masked LM never masks (so never scores) these
    assert Shard(1, 2).examples([sft]) == [blank(sft)] and Shard(0, 2).examples([]) == []
