"""Data in other tools' formats reads as hone's own, row by row and file by file: ShareGPT, TRL's
conversational prompt-completion and implicit-prompt preference, renamed columns; errors name the row."""

from __future__ import annotations

import pytest

from hone.training.config import load_config
from hone.training.data import DataError, read_dataset
from hone.training.prepare import prepare
from tests.tiny import write_jsonl

SHAREGPT = [
    {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": f"copy {c} ->"},
            {"from": "gpt", "value": c},
        ]
    }
    for c in "abcdefgh"
]


def _data(*overrides: str):
    return load_config(None, ["model.source=x", "data.eval=0.25", *overrides]).data


def test_sharegpt_and_messages_files_mix_into_one_chat_dataset(tmp_path):
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT)
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4,
    )
    fmt, train, held_out = read_dataset(_data(f"data.train=[{sharegpt}, {chat}]"), "sft", 0)
    assert fmt == "messages" and len(train) + len(held_out) == 12
    first = next(r for r in train + held_out if r["_source"] == f"{sharegpt}:1")
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "copy a ->"},
        {"role": "assistant", "content": "a"},
    ]


def test_llama_factory_sharegpt_roles_and_its_system_column(tmp_path):
    row = {
        "system": "You are a tool user.",
        "conversations": [
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "weather"}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is sunny."},
        ],
    }
    data = write_jsonl(tmp_path / "tools.jsonl", [row] * 4)
    _, train, _ = read_dataset(_data(f"data.train=[{data}]"), "sft", 0)
    assert [m["role"] for m in train[0]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]


def test_trl_conversational_prompt_completion_becomes_messages(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": f"copy {c} ->"}], "completion": [{"role": "assistant", "content": c}]}
        for c in "abcd"
    ]
    data = write_jsonl(tmp_path / "trl.jsonl", rows)
    fmt, train, held_out = read_dataset(_data(f"data.train=[{data}]"), "sft", 0)
    assert fmt == "messages"
    assert [m["role"] for m in (train + held_out)[0]["messages"]] == ["user", "assistant"]


def test_trl_implicit_prompt_preference_splits_at_the_shared_turns(tmp_path):
    user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "copy a ->"}]
    rows = [
        {"chosen": [*user, {"role": "assistant", "content": "a"}], "rejected": [*user, {"role": "assistant", "content": "b"}]}
    ] * 4
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    fmt, train, _ = read_dataset(_data(f"data.train=[{data}]"), "dpo", 0)
    assert fmt == "preference"
    assert train[0]["prompt"] == user
    assert train[0]["chosen"] == [{"role": "assistant", "content": "a"}]
    assert train[0]["rejected"] == [{"role": "assistant", "content": "b"}]

    unshared = write_jsonl(tmp_path / "unshared.jsonl", [{"chosen": user[1:], "rejected": user[:1]}])
    with pytest.raises(DataError, match=r"unshared\.jsonl:1: 'chosen' and 'rejected' share no first turn"):
        read_dataset(_data(f"data.train=[{unshared}]"), "dpo", 0)


def test_columns_rename_fields_in_train_and_eval_files(tmp_path):
    train = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)])
    held = write_jsonl(tmp_path / "qa_eval.jsonl", [{"question": "q", "answer": "a"}])
    data = _data(f"data.train=[{train}]", f"data.eval=[{held}]", "data.columns={question: prompt, answer: completion}")
    fmt, rows, held_out = read_dataset(data, "sft", 0)
    assert fmt == "prompt_completion" and rows[0]["prompt"] == "q0" and held_out[0]["completion"] == "a"

    clash = write_jsonl(tmp_path / "clash.jsonl", [{"question": "q", "prompt": "p", "completion": "c"}] * 2)
    with pytest.raises(DataError, match=r"clash\.jsonl:1: data\.columns renames a field to 'prompt', which the row already has"):
        read_dataset(_data(f"data.train=[{clash}]", "data.columns={question: prompt}"), "sft", 0)


def test_an_unknown_speaker_and_mixed_formats_are_named(tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"conversations": [{"from": "narrator", "value": "once"}]}])
    with pytest.raises(DataError, match=r"odd\.jsonl:1: conversations\[0\] is from 'narrator'; use one of .*human"):
        read_dataset(_data(f"data.train=[{odd}]"), "sft", 0)
    chat = write_jsonl(tmp_path / "chat.jsonl", SHAREGPT)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "p", "completion": "c"}] * 4)
    with pytest.raises(
        DataError, match=r"mixes formats: .*chat\.jsonl:1 is 'messages' but .*plain\.jsonl:1 is 'prompt_completion'"
    ):
        read_dataset(_data(f"data.train=[{chat}, {plain}]"), "sft", 0)


def test_a_sharegpt_file_tokenizes_for_sft(tmp_path, assets):
    data = write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT)
    cfg = load_config(
        None,
        [f"model.source={assets['llama']}", f"data.train=[{data}]", "data.max_seq_len=64", f"data.cache_dir={tmp_path / 'c'}"],
    )
    prepared = prepare(cfg)
    assert prepared.fmt == "messages" and prepared.train_stats.num_loss_tokens > 0


def test_an_assistant_turn_in_a_trl_prompt_is_context_not_a_target(assets):
    from hone.training.formats import to_hone_row
    from hone.training.models import load_tokenizer
    from hone.training.tokens import tokenize_supervised

    tokenizer = load_tokenizer(
        load_config(None, [f"model.source={assets['llama']}", "data.train=[x]"]).model, str(assets["llama"])
    )
    history = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c d e f"}, {"role": "user", "content": "g"}]
    reply = [{"role": "assistant", "content": "h"}]
    trl = tokenize_supervised(to_hone_row({"prompt": history, "completion": reply, "_source": "r"}, {}), "messages", tokenizer)
    whole = tokenize_supervised({"messages": [*history, *reply], "_source": "r"}, "messages", tokenizer)
    targets = [sum(label != -100 for label in e["labels"]) for e in (trl, whole)]
    assert trl["input_ids"] == whole["input_ids"] and 0 < targets[0] < targets[1]


TOOL_ROW = {
    "messages": [
        {"role": "user", "content": "weather in Oulu?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oulu"}}}
        ]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]
}  # fmt: skip


def test_openai_tool_calls_train_through_a_template_that_renders_them(tmp_path, assets):
    from hone.training.models import load_tokenizer

    data = write_jsonl(tmp_path / "tools.jsonl", [TOOL_ROW] * 8)
    base = [f"model.source={assets['llama']}", f"data.train=[{data}]", "data.max_seq_len=256"]
    cfg = load_config(None, [*base, "data.chat_template=qwen2_5", f"data.cache_dir={tmp_path / 'c'}"])
    prepared = prepare(cfg)
    tokenizer = load_tokenizer(cfg.model, str(assets["llama"]), "qwen2_5")
    assert "<|im_start|>" in tokenizer.apply_chat_template(TOOL_ROW["messages"], tokenize=False)  # Qwen's, not its own
    labels = prepared.train_examples[0]["labels"]
    trained = [label != -100 for label in labels]
    spans = sum(1 for i, t in enumerate(trained) if t and (i == 0 or not trained[i - 1]))
    assert spans == 2  # the tool call turn and the final reply are targets; the user and tool turns are not

    # the tiny model's own template drops tool_calls: refused, naming the row and the fix
    with pytest.raises(DataError, match=r"tools\.jsonl:\d+: the chat template does not render the assistant's tool_calls"):
        prepare(load_config(None, [*base, f"data.cache_dir={tmp_path / 'd'}"]))


def test_a_chat_template_file_or_name_replaces_the_models_and_keys_the_cache(tmp_path, assets):
    from hone.training.config import ConfigError

    data = write_jsonl(tmp_path / "chat.jsonl", SHAREGPT)
    template = tmp_path / "mine.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    base = [f"model.source={assets['llama']}", f"data.train=[{data}]", "data.max_seq_len=128", f"data.cache_dir={tmp_path / 'c'}"]
    own = prepare(load_config(None, base))
    mine = prepare(load_config(None, [*base, f"data.chat_template={template}"]))
    assert mine.token_cache != own.token_cache and mine.train_examples[0] != own.train_examples[0]
    template.write_text(template.read_text().replace("[assistant]", "[bot]"))
    assert prepare(load_config(None, [*base, f"data.chat_template={template}"])).token_cache != mine.token_cache
    with pytest.raises(ConfigError, match=r"data\.chat_template='nope' is neither a file nor a known template name.*qwen2_5"):
        prepare(load_config(None, [*base, "data.chat_template=nope"]))


def test_a_template_that_drops_earlier_reasoning_still_marks_every_assistant_turn(assets):
    """Qwen3's template drops an earlier turn's <think> block once a later user turn follows, so rendering a
    prefix and diffing would mis-mark that turn; hone then takes the assistant mask of TRL's training
    version of the template (what TRL's SFTTrainer trains with), where every assistant turn is a target."""
    from hone.training.models import load_tokenizer
    from hone.training.tokens import tokenize_supervised

    tokenizer = load_tokenizer(
        load_config(None, [f"model.source={assets['llama']}", "data.train=[x]"]).model, str(assets["llama"]), "qwen3"
    )
    messages = [
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "<think>c d</think>e f"},
        {"role": "user", "content": "g"},
        {"role": "assistant", "content": "<think>h</think>a"},
    ]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "c d" not in full  # the template rewrites the first turn once the second follows
    example = tokenize_supervised({"messages": messages, "_source": "r"}, "messages", tokenizer)
    trained = [label != -100 for label in example["labels"]]
    spans = sum(1 for i, t in enumerate(trained) if t and (i == 0 or not trained[i - 1]))
    assert spans == 2 and sum(trained) < len(trained)
    # rendered with TRL's training version (prefix-preserving: the first turn keeps what it said)
    assert len(example["input_ids"]) > len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def test_train_on_prompt_makes_every_token_a_target(tmp_path, assets):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"copy {c} ->", "completion": f" {c}"} for c in "abcdefgh"])
    base = [f"model.source={assets['llama']}", f"data.train=[{data}]", "data.max_seq_len=32", f"data.cache_dir={tmp_path / 'c'}"]
    completion_only, everything = (prepare(load_config(None, [*base, f"data.train_on_prompt={v}"])) for v in ("false", "true"))
    example = everything.train_examples[0]
    assert example["labels"] == example["input_ids"]
    assert (
        completion_only.train_stats.num_loss_tokens < everything.train_stats.num_loss_tokens == everything.train_stats.num_tokens
    )
