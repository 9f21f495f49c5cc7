"""Tiny models and data built in-process: no downloads, seconds to train on 2 CPU cores."""

from __future__ import annotations

import json
import random
from pathlib import Path

LETTERS = list("abcdefghijklmnop")
WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "log", "ran", "to", "big", "red", "hat", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"]
VOCAB = SPECIAL + ["<user>", "<assistant>", "<system>", "copy", "->", "?", "."] + LETTERS + WORDS
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [EOS] {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins word-level tokens with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        mask_token="[MASK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_causal_model(
    path: Path, seed: int = 0, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2, max_positions: int = 256
) -> Path:
    """A Llama built from a config (the tests' default is tiny; the benches ask for a bigger one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_masked_model(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def copy_rows(n: int, seed: int = 0, min_len: int = 2, max_len: int = 4) -> list[dict]:
    """A learnable supervised task: copy a short letter sequence."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        letters = " ".join(rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len)))
        rows.append({"prompt": f"copy {letters} ->", "completion": f" {letters}"})
    return rows


def text_rows(n: int, seed: int = 0) -> list[dict]:
    """Learnable unlabeled text: a few sentence patterns over a small vocabulary."""
    rng = random.Random(seed)
    patterns = ["the {a} sat on the {b}", "a big red {a} ran to the {b}", "the {a} and the {b} sat on a mat"]
    animals, places = ["cat", "dog"], ["mat", "log", "hat"]
    return [
        {"text": " . ".join(rng.choice(patterns).format(a=rng.choice(animals), b=rng.choice(places)) for _ in range(3))}
        for _ in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def preference_rows(n: int, seed: int = 0, chat: bool = False, off_topic: bool = False) -> list[dict]:
    """A learnable preference task: the chosen reply copies the letters, the rejected one gets them wrong
    (other letters, same length), or with `off_topic` answers with words instead of letters."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(2, 4))]
        wrong = [rng.choice(WORDS) if off_topic else rng.choice([x for x in LETTERS if x != c]) for c in letters]
        prompt, chosen, rejected = f"copy {' '.join(letters)} ->", f" {' '.join(letters)}", f" {' '.join(wrong)}"
        if chat:
            rows.append({"prompt": [{"role": "user", "content": prompt}], "chosen": chosen.strip(), "rejected": rejected.strip()})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows
