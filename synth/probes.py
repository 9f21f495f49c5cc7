"""Document-recall probes: questions for users who bring no test questions of their own.

One sentence of a sample of chunks is held out: its probe asks for one salient span of it, in a form no
training item uses, and every training question that quotes the sentence is dropped by the same n-gram
check that keeps evaluation questions out (synth/quality.py, EvalOverlap). The fact can still be learned
from the other places the documents state it and from the text itself, which is what the probe measures:
whether what the documents say became something the model can answer.
"""

from __future__ import annotations

import random
from typing import Any

from hone.synth.documents import Chunk
from hone.synth.templates import emphasised, salient_spans, sentences

GROUP = "doc_recall"
# The kinds worth a probe: what a reader would look up. A bare name is often the subject of the
# sentence rather than the fact stated about it.
PROBED = ("quantity", "money", "date", "hours", "code", "email", "phone", "channel", "term", "number")


def doc_recall_probes(chunks: list[Chunk], seed: int, count: int = 40) -> list[dict[str, Any]]:
    """Up to `count` probe rows, one per chunk drawn (seeded), as chat rows the pipeline's eval reads."""
    rng = random.Random(seed)
    candidates = []
    for chunk in chunks:
        terms = emphasised(chunk.text)
        items = [(s, span) for s in sentences(chunk.text) for span, kind in salient_spans(s, terms) if kind in PROBED]
        if items:
            candidates.append((chunk, rng.choice(items)))
    rng.shuffle(candidates)
    rows = []
    for chunk, (sentence, span) in sorted(candidates[:count], key=lambda c: (c[0].doc, c[0].index)):
        body = sentence.rstrip(" .!?")
        gap = body.replace(span, "...", 1)
        question = f"Recall from the documents and give only the missing words: {gap}."
        rows.append(
            {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": span}],
                "key_fact": span,
                "group": GROUP,
                "source": chunk.doc,
                "chunk": chunk.index,
                "evidence": sentence,
            }
        )
    return rows
