"""Data as users bring it trains, in each tool's own documented shape: ShareGPT (LLaMA-Factory, Axolotl),
TRL's conversational prompt-completion from a folder laid out like a hub dataset, OpenAI messages with tool
calls, mixed by weight in one sft run; TRL's implicit-prompt preference pairs in a dpo run."""

from __future__ import annotations

import math

import pytest

from hone.cluster.run import run
from hone.training.config import load_config
from tests.tiny import copy_rows, preference_rows, write_jsonl
from tests.training.test_sources import hub_folder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_sharegpt_trl_and_openai_tool_rows_mixed_by_weight_train_one_model(assets, tmp_path):
    rows = copy_rows(48, seed=3)
    sharegpt = write_jsonl(
        tmp_path / "sharegpt.jsonl",
        [{"conversations": [{"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["completion"]}]} for r in rows],
    )
    tools = write_jsonl(
        tmp_path / "tools.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"type": "function", "function": {"name": "copy", "arguments": {"text": r["completion"]}}}
                    ]},
                    {"role": "tool", "content": r["completion"]},
                    {"role": "assistant", "content": r["completion"]},
                ]
            }
            for r in rows[:16]
        ],
    )  # fmt: skip
    repo = hub_folder(tmp_path / "trl-dataset")
    sources = f"[{{path: {sharegpt}, weight: 2}}, {{path: {repo}, subset: letters, weight: 1}}, {{path: {tools}, weight: 1}}]"
    summary = run(
        load_config(
            None,
            [
                "mode=sft", f"output_dir={tmp_path / 'out'}", f"model.source={assets['llama']}", f"data.train={sources}",
                "data.chat_template=qwen2_5", "data.max_seq_len=96", "optim.lr=3e-3", "train.max_steps=8",
                "train.micro_batch_per_device=8", "eval.max_samples=4", "eval.max_new_tokens=4",
            ],
        )
    )  # fmt: skip
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    assert summary["steps"] == 8 and after["loss"] < before["loss"] - 0.5, (before, after)
    # 72 rows read (48 + 8 + 16), a tenth held out; the rest resampled to 2 : 1 : 1 shares
    assert summary["data"]["train"]["rows"] == 65


def test_trl_implicit_prompt_pairs_train_a_dpo_run(assets, tmp_path):
    pairs = [
        {
            "chosen": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"].strip()}],
            "rejected": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["rejected"].strip()}],
        }
        for r in preference_rows(96, seed=5)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    summary = run(
        load_config(
            None,
            [
                "mode=dpo", f"output_dir={tmp_path / 'out'}", f"model.source={assets['llama']}", f"data.train=[{data}]",
                "data.max_seq_len=32", "optim.lr=3e-3", "train.max_steps=20", "train.micro_batch_per_device=8", "dpo.beta=0.1",
                "eval.batch_size=16",
            ],
        )
    )  # fmt: skip
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    assert before["loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    # the chosen replies gain on the rejected ones (measured: loss 0.693 -> 0.661, margin 0 -> 0.08)
    assert after["loss"] < before["loss"] - 0.015 and after["reward_margin"] > 0.03, (before, after)
