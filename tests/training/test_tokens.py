import pytest
import torch

from hone.training.batches import collate
from hone.training.losses import IGNORE
from hone.training.tokens import build_pretrain, build_supervised, pack, tokenize_supervised
from tests.tiny import copy_rows, make_tokenizer


def test_prompt_tokens_are_masked_and_eos_is_a_target():
    tok = make_tokenizer()
    ex = tokenize_supervised({"prompt": "copy a b ->", "completion": " a b", "_source": "x"}, "prompt_completion", tok)
    words = tok.convert_ids_to_tokens(ex["input_ids"])
    assert words == ["copy", "a", "b", "->", "a", "b", "[EOS]"]
    targets = [w for w, label in zip(words, ex["labels"], strict=True) if label != IGNORE]
    assert targets == ["a", "b", "[EOS]"]


def test_chat_rows_train_on_every_assistant_turn_only():
    tok = make_tokenizer()
    messages = [
        {"role": "user", "content": "copy a ->"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "copy b ->"},
        {"role": "assistant", "content": "b"},
    ]
    ex = tokenize_supervised({"messages": messages, "_source": "x"}, "messages", tok)
    words = tok.convert_ids_to_tokens(ex["input_ids"])
    targets = [w for w, label in zip(words, ex["labels"], strict=True) if label != IGNORE]
    assert targets == ["a", "[EOS]", "b", "[EOS]"]


def test_instruction_rows_use_the_chat_template():
    tok = make_tokenizer()
    row = {"instruction": "copy", "input": "a ->", "output": "a", "_source": "x"}
    ex = tokenize_supervised(row, "instruction", tok)
    assert tok.decode(ex["input_ids"]).startswith("<user> copy a -> [EOS] <assistant> a")


def test_truncation_and_dropping_are_counted():
    tok = make_tokenizer()
    rows = [
        {"prompt": "copy a b c d ->", "completion": " a b c d", "_source": "1"},
        {"prompt": "copy a b c d e f g h ->", "completion": " a", "_source": "2"},
        {"prompt": "copy a ->", "completion": " a", "_source": "3"},
    ]
    examples, stats = build_supervised(rows, "prompt_completion", tok, max_seq_len=8)
    assert len(examples) == 2 and stats.num_truncated == 1
    assert dict(stats.dropped) == {"prompt fills max_seq_len, no completion token left": 1}


def test_pretrain_splits_long_documents_without_losing_tokens():
    tok = make_tokenizer()
    text = " ".join(["the cat sat on the mat"] * 5)  # 30 words + EOS
    examples, stats = build_pretrain([{"text": text, "_source": "d"}], tok, max_seq_len=8, masked=False)
    assert sum(len(e["input_ids"]) for e in examples) == 31
    assert stats.num_truncated == 1 and max(len(e["input_ids"]) for e in examples) == 8


def test_packing_keeps_sequences_apart(tmp_path):
    """A packed row gives every sequence the same logits it gets alone: packing changes speed, not math."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import make_causal_model

    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "m")).eval()
    rows = [{"prompt": f"copy {s} ->", "completion": f" {s}", "_source": str(i)} for i, s in enumerate(["a b", "c d e f", "g"])]
    examples, _ = build_supervised(rows, "prompt_completion", tok, max_seq_len=64)
    packed = pack(examples, max_seq_len=64)
    assert len(packed) == 1
    batch = collate(packed, tok.pad_token_id)
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for ex in sorted(examples, key=lambda e: -len(e["input_ids"])):  # BFD places longest first
            alone = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            end = start + len(ex["input_ids"])
            assert torch.allclose(packed_logits[start:end], alone, atol=1e-5)
            start = end


def test_packed_loss_equals_unpacked_loss(tmp_path):
    from transformers import AutoModelForCausalLM

    from hone.training.forward import forward_loss_sum
    from tests.tiny import copy_rows, make_causal_model

    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "m")).eval()
    rows = [{**r, "_source": str(i)} for i, r in enumerate(copy_rows(12, seed=5, min_len=1, max_len=8))]
    examples, _ = build_supervised(rows, "prompt_completion", tok, max_seq_len=64)
    with torch.no_grad():
        unpacked = forward_loss_sum(model, collate(examples, tok.pad_token_id), "causal")
        packed = forward_loss_sum(model, collate(pack(examples, 32), tok.pad_token_id), "causal")
    assert int(unpacked[1]) == int(packed[1])
    assert torch.isclose(unpacked[0], packed[0], rtol=1e-5)


def _rows_with_a_system_prompt(n: int) -> list[dict]:
    from tests.tiny import copy_rows

    # Nine tokens every prompt starts with ("a ... h copy"), as a chat template's system prompt would be.
    return [
        {**r, "prompt": f"a b c d e f g h {r['prompt']}", "_source": str(i)}
        for i, r in enumerate(copy_rows(12, seed=5, min_len=1, max_len=8))
    ][:n]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_rows_packed_behind_their_shared_prefix_give_the_unpacked_loss_and_gradients(tmp_path, attention):
    """The prefix all rows share is packed once per row, and every row still sees it at its own
    positions: the loss and every gradient are those of the rows unpacked, with fewer tokens computed."""
    from transformers import AutoModelForCausalLM

    from hone.training.forward import forward_loss_sum
    from hone.training.tokens import shared_prompt_prefix
    from tests.tiny import make_causal_model

    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "m"), attn_implementation=attention)
    examples, _ = build_supervised(_rows_with_a_system_prompt(12), "prompt_completion", tok, max_seq_len=64)
    assert shared_prompt_prefix(examples) == 9
    shared = pack(examples, 48)
    assert "segment_ids" in shared[0] and all(row["input_ids"][:9] == examples[0]["input_ids"][:9] for row in shared)
    assert sum(map(len, (r["input_ids"] for r in shared))) < sum(map(len, (e["input_ids"] for e in examples)))

    def loss_and_grads(batch):
        model.zero_grad()
        loss_sum, count = forward_loss_sum(model, batch, "causal")
        loss_sum.backward()
        return loss_sum.detach(), int(count), [p.grad.clone() for p in model.parameters()]

    unpacked = loss_and_grads(collate(examples, tok.pad_token_id))
    packed = loss_and_grads(collate(shared, tok.pad_token_id))
    assert packed[1] == unpacked[1]
    assert torch.isclose(packed[0], unpacked[0], rtol=1e-5)
    for a, b in zip(packed[2], unpacked[2], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_no_prefix_is_shared_when_rows_differ_early_and_none_reaches_a_target():
    from hone.training.tokens import shared_prompt_prefix

    tok = make_tokenizer()
    plain, _ = build_supervised(
        [{**r, "_source": str(i)} for i, r in enumerate(copy_rows(6, seed=1))], "prompt_completion", tok, 64
    )
    assert shared_prompt_prefix(plain) == 0 and "segment_ids" not in pack(plain, 64)[0]
    text, _ = build_pretrain([{"text": "a b c d e f g h i j k l", "_source": str(i)} for i in range(3)], tok, 64, masked=False)
    assert shared_prompt_prefix(text) == 0  # every token is a target
    # One prompt, several answers: the shared tokens stop before the last prompt token, which must stay
    # in each packed sequence to predict its answer from.
    same, _ = build_supervised(
        [{"prompt": "a b c d e f g h copy ->", "completion": f" {c}", "_source": c} for c in "ijk"], "prompt_completion", tok, 64
    )
    assert shared_prompt_prefix(same) == 9


def test_sft_loss_from_kept_logits_matches_full_logits_through_lora(tmp_path):
    """forward_loss_sum asks the model for logits only where a target is predicted: the loss and the
    LoRA gradients must be those of the full-logits loss."""
    from transformers import AutoModelForCausalLM

    from hone.training.config import LoraConfig
    from hone.training.forward import forward_loss_sum, takes_logits_to_keep
    from hone.training.losses import causal_lm_loss_sum
    from hone.training.models import add_lora
    from tests.tiny import copy_rows, make_causal_model

    tok = make_tokenizer()
    model = add_lora(AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "m")), LoraConfig(dropout=0.0), "causal")
    assert takes_logits_to_keep(model)
    rows = [{**r, "_source": str(i)} for i, r in enumerate(copy_rows(6, seed=3, min_len=2, max_len=9))]
    batch = collate(build_supervised(rows, "prompt_completion", tok, max_seq_len=64)[0], tok.pad_token_id)
    lora = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(loss_sum, n):
        (loss_sum / n).backward()
        grads = [p.grad.clone() for p in lora]
        model.zero_grad()
        return loss_sum.detach(), grads

    kept = loss_and_grads(*forward_loss_sum(model, batch, "causal"))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    full = loss_and_grads(*causal_lm_loss_sum(model(**inputs, use_cache=False).logits, batch["labels"]))
    assert torch.isclose(kept[0], full[0], rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(kept[1], full[1], strict=True))
    assert any(float(g.abs().sum()) > 0 for g in kept[1])
