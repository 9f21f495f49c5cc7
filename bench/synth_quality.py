"""What a generator's replies are worth for synthesis: how many of its questions survive the checks.

    .venv/bin/python bench/synth_quality.py                       # SmolLM2-135M-Instruct, 3 handbook chunks
    .venv/bin/python bench/synth_quality.py --model DIR --first 0 --chunks 10 --max-new-tokens 256

Chunks the handbook (examples/handbook/handbook), asks the generator every question style and
restatement of `hone.synth.prompts` per chunk, and prints the per-document report (kept, rejected and
why, exposures) with examples. The held-out questions are the evaluation set the filter checks against.
Replies are cached under --cache, so a rerun only re-reads them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from smollm2 import gguf_path  # bench/ is on the path when this script runs

from hone.synth.cache import ReplyCache
from hone.synth.documents import chunk_document, read_documents
from hone.synth.local import Completer, LocalSettings
from hone.synth.quality import EvalOverlap
from hone.synth.step import Recipe, assemble, by_document, fetch, missing, plan
from hone.training.models import resolve_source

HANDBOOK = Path(__file__).resolve().parent.parent / "examples" / "handbook"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="")
    parser.add_argument("--first", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--cache", default="/tmp/hone-synth-quality")
    args = parser.parse_args()

    source = resolve_source(args.model or gguf_path())
    docs = read_documents(HANDBOOK / "handbook")
    chunks = [c for doc, text in docs.items() for c in chunk_document(doc, text, 180)][args.first : args.first + args.chunks]
    heldout = EvalOverlap(json.loads(line)["question"] for line in (HANDBOOK / "heldout.jsonl").read_text().splitlines())
    settings = LocalSettings(source, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    recipe, cache = Recipe(), ReplyCache(Path(args.cache))
    requests = plan(chunks, recipe, f"{source}|{args.max_new_tokens}|{args.temperature}")
    todo = missing(requests, cache)
    started = time.perf_counter()
    if todo:
        completer = Completer(settings)
        for done in fetch(todo, lambda prompts: completer.complete(prompts, seed=0), cache, batch_size=16):
            print(f"asked {done} prompts, {time.perf_counter() - started:.0f} s", flush=True)
    out = assemble(chunks, requests, cache, recipe, heldout)
    print(json.dumps(by_document(out.chunks), indent=1))
    print(f"{len(requests)} prompts for {len(chunks)} chunks: {len(out.qa_rows)} question/answer pairs kept, "
          f"{len(out.text_rows) - len(chunks)} restatements kept")  # fmt: skip
    for row in out.qa_rows[:10]:
        print(f"  QA [{row['style']}] {row['messages'][0]['content']} -> {row['messages'][1]['content']}")


if __name__ == "__main__":
    main()
