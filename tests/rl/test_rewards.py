"""Built-in rewards and the skipped-sample fill, against hand-worked values."""

import torch

from hone.rl.algorithms import fill_invalid, group_advantages
from hone.rl.rewards import bad_values, exact_match, length_penalty, numeric_match, regex_match


def test_exact_match_ignores_case_and_whitespace_runs():
    assert exact_match(["  Paris ", "paris  france", "PARIS"], ["paris", "paris france", "Lyon"]) == [1.0, 1.0, 0.0]


def test_numeric_match_reads_the_last_number():
    completions = ["17 + 25 = 42", "The answer is 1,024.", "no idea", "42.0", "-3"]
    assert numeric_match(completions, ["42", "1024", "7", 42, "-3"]) == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_regex_and_length_penalty():
    assert regex_match(["<answer>4</answer>", "4"], r"^<answer>.*</answer>$") == [1.0, 0.0]
    assert length_penalty([3, 10, 15], target_length=10) == [0.0, 0.0, -0.5]


def test_bad_values_name_the_sample():
    bad = bad_values("mine", [1.0, float("nan"), "x", True, 2], ["p0", "p1", "p2", "p3", "p4"], ["c0", "c1", "c2", "c3", "c4"])
    assert [i for i, _ in bad] == [1, 2, 3]
    assert bad[0][1] == "reward 'mine' returned nan for sample 1 (prompt 'p1', completion 'c1')"


def test_skipped_samples_take_their_group_mean_and_change_no_other_advantage():
    rewards = torch.tensor([1.0, 0.0, 99.0, 0.0, 5.0, 5.0])
    valid = torch.tensor([True, True, False, True, False, False])
    filled = fill_invalid(rewards, valid, group_size=3)
    assert filled.tolist() == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0]  # a group with nothing valid gets 0
    adv = group_advantages(filled, 3)
    # The skipped sample sits at the mean, so it gets advantage 0 and the group's others keep their order.
    assert adv[2] == 0 and adv[0] > 0 > adv[1]
