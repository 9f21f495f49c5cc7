"""Consistency check for the handbook example data (stdlib only).

Run from anywhere: python3 examples/handbook/check_data.py
Exits 1 and lists every problem when a check fails.
"""

import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOOK = HERE / "handbook"


def load(name):
    rows = []
    with open(HERE / name, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{name}:{n}: not JSON: {e}")
    return rows


def norm(q):
    return re.sub(r"\s+", " ", q).strip().lower()


def main():
    errors = []
    pages = {p.name: p.read_text(encoding="utf-8") for p in sorted(BOOK.glob("*.md"))}
    book = "\n".join(pages.values()).lower()
    size_kb = sum(len(t.encode("utf-8")) for t in pages.values()) / 1024

    facts = load("facts.jsonl")
    train = load("train_qa.jsonl")
    heldout = load("heldout.jsonl")
    rl = load("rl_prompts.jsonl")

    by_id = {}
    for f in facts:
        if f["id"] in by_id:
            errors.append(f"facts: duplicate id {f['id']}")
        by_id[f["id"]] = f
        if f["source"] not in pages:
            errors.append(f"{f['id']}: source {f['source']} is not a handbook file")
        elif f["answer"].lower() not in pages[f["source"]].lower():
            errors.append(f"{f['id']}: answer {f['answer']!r} not in its source {f['source']}")
        if f["answer"].lower() not in book:
            errors.append(f"{f['id']}: answer {f['answer']!r} not found in the handbook")
        if not 1 <= len(f["answer"].split()) <= 4:
            errors.append(f"{f['id']}: answer {f['answer']!r} is not 1-4 words")

    def ref(kind, i, row):
        fid = row.get("fact")
        if fid not in by_id:
            errors.append(f"{kind} row {i}: unknown fact id {fid!r}")
            return None
        return by_id[fid]

    train_q = set()
    trained = Counter()
    for i, r in enumerate(train, 1):
        f = ref("train_qa", i, r)
        msgs = r["messages"]
        if [m["role"] for m in msgs] != ["user", "assistant"]:
            errors.append(f"train_qa row {i}: roles must be user, assistant")
            continue
        train_q.add(norm(msgs[0]["content"]))
        if f:
            trained[f["id"]] += 1
            if msgs[1]["content"] != f["answer"]:
                errors.append(f"train_qa row {i}: assistant {msgs[1]['content']!r} != answer {f['answer']!r}")

    rl_q = set()
    rl_facts = set()
    for i, r in enumerate(rl, 1):
        f = ref("rl_prompts", i, r)
        q = norm(r["messages"][0]["content"])
        # The RL prompts are the third SFT wording of each trained fact: RL practises, by sampling, the
        # answers SFT taught.
        if q not in train_q:
            errors.append(f"rl_prompts row {i}: question is not one of the train_qa questions")
        rl_q.add(q)
        if f:
            rl_facts.add(f["id"])
            if r["answer"] != f["answer"]:
                errors.append(f"rl_prompts row {i}: answer differs from {f['id']}")
            if r["key_fact"].lower() not in r["answer"].lower():
                errors.append(f"rl_prompts row {i}: key_fact not within the answer")

    groups = Counter()
    only = set()
    for i, r in enumerate(heldout, 1):
        f = ref("heldout", i, r)
        groups[r["group"]] += 1
        q = norm(r["question"])
        if q in train_q or q in rl_q:
            errors.append(f"heldout row {i}: question equals a training or RL question")
        if not f:
            continue
        if r["answer"] != f["answer"]:
            errors.append(f"heldout row {i}: answer differs from {f['id']}")
        if r["key_fact"].lower() not in r["answer"].lower() or r["key_fact"].lower() not in book:
            errors.append(f"heldout row {i}: key_fact {r['key_fact']!r} not in the answer or the handbook")
        if r["group"] == "handbook_only":
            only.add(f["id"])
        elif r["group"] == "paraphrase":
            if f["id"] not in trained:
                errors.append(f"heldout row {i}: paraphrase of untrained fact {f['id']}")
        else:
            errors.append(f"heldout row {i}: unknown group {r['group']!r}")

    # heldout_eval.jsonl is the same questions as chat rows, the form hone's pipeline eval reads.
    chat = load("heldout_eval.jsonl")
    as_chat = [
        {
            "messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}],
            "key_fact": r["key_fact"],
            "group": r["group"],
            "fact": r["fact"],
        }
        for r in heldout
    ]
    if chat != as_chat:
        errors.append("heldout_eval.jsonl is not heldout.jsonl as chat rows; regenerate it from heldout.jsonl")

    for fid in sorted(only):
        if fid in trained or fid in rl_facts:
            errors.append(f"{fid}: handbook_only fact appears in train_qa or rl_prompts")
    if set(trained) != rl_facts:
        errors.append("rl_prompts do not cover exactly the trained facts")

    print(f"handbook: {len(pages)} files, {size_kb:.1f} KB")
    print(f"facts.jsonl: {len(facts)} facts")
    print(f"train_qa.jsonl: {len(train)} rows over {len(trained)} trained facts")
    print(f"rl_prompts.jsonl: {len(rl)} rows over {len(rl_facts)} facts")
    print(f"heldout.jsonl: {len(heldout)} rows ({', '.join(f'{g} {n}' for g, n in sorted(groups.items()))})")
    unused = set(by_id) - set(trained) - only
    if unused:
        print(f"facts asked nowhere: {len(unused)}")
    if errors:
        print(f"\n{len(errors)} problem(s):")
        for e in errors:
            print("  " + e)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
