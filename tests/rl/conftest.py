"""RL fixtures: a toy prompt set a tiny model can learn from a rule reward in a few CPU minutes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.tiny import LETTERS, write_jsonl


def letter_prompts(n: int, seed: int = 0) -> list[dict]:
    """'copy x ->' with the answer x: the reward pays for starting with a letter, and more for the right one."""
    rng = random.Random(seed)
    letters = [rng.choice(LETTERS) for _ in range(n)]
    return [{"prompt": f"copy {x} ->", "answer": x, "group": "a-h" if x <= "h" else "i-p"} for x in letters]


@pytest.fixture(scope="session")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("rl") / "prompts.jsonl", letter_prompts(120))


def rl_overrides(assets: dict[str, Path], prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "mode=rl",
        f"output_dir={out}",
        f"model.source={assets['llama']}",
        f"data.train=[{prompts}]",
        "data.max_seq_len=16",
        "optim.lr=1e-2",
        "optim.decay=constant",
        "train.max_steps=12",
        "train.micro_batch_per_device=16",
        "eval.max_samples=24",
        "rl.group_size=8",
        "rl.prompts_per_step=8",
        "rl.generation.max_new_tokens=2",
        "rl.reward.cpus=0",
        "rl.rewards=[{type: regex, pattern: '^[a-p]( |$)', name: letter_first}, {type: exact_match, field: answer}]",
        *extra,
    ]
