"""Questions that need no generator and are grounded by construction: each salient span of a sentence (a
name, a code, a number) becomes an answer, and the sentence around it becomes questions that ask for it.

This is the "simple templates at scale" end of the research (SPA, 2026): many plain, varied exposures of
every fact in question form, mixed into training from the start. It is the path that works when the
generator is the small model being tuned: SmolLM2-135M writes no usable question/answer pair
(bench/results/synth_quality.md). A stronger generator's items are added to these, not instead.
"""

from __future__ import annotations

import re

from hone.synth.parse import QA
from hone.synth.quality import strip_emphasis

# A code: letters and digits joined by a dash or run together (TX-40, FH-40, DL-7, B12); a number: digits
# with their separators and a unit-less time (4410, 8:00, 1,200, 14.50); a name: capitalised words in a
# row (Rasmus Oddvar, Kiln House, Dewline), where one capitalised word at the start of a sentence is not
# a name (it is every sentence's first word).
CODE = r"\b[A-Z]{1,6}-?\d{1,5}[A-Z]?\b"
NUMBER = r"\b\d[\d,.:]*\d\b|\b\d\b"
NAME = r"\b[A-Z][\w'-]*[a-z][\w'-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w'-]*)*"
SPAN = re.compile(rf"(?P<code>{CODE})|(?P<number>{NUMBER})|(?P<name>{NAME})")
ASK = {"code": "which code", "number": "what number", "name": "what name"}
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# Capitalised only because they open the sentence: "The Kiln House ..." names Kiln House.
OPENERS = frozenset("the a an our your their its this that these those each every all any in on at for from to".split())


def sentences(text: str) -> list[str]:
    """The chunk's sentences, list items and table rows (cells joined: "IT Service Desk, Piet's team,
    2718."), markdown marks removed; a table's header and separator rows are not facts and are dropped."""
    clean = _table_rows_as_sentences(strip_emphasis(text))
    parts = (re.sub(r"^\s*([-+]|\d+[.)])\s+", "", p).strip() for p in SENTENCE.split(clean))
    return [p for p in parts if len(p.split()) >= 4]


def _table_rows_as_sentences(text: str) -> str:
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("|"):
            out.append(line)
            continue
        separator = re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", line) is not None
        header = i + 1 < len(lines) and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", lines[i + 1]) is not None
        if not (separator or header):
            out.append(", ".join(c.strip() for c in line.strip().strip("|").split("|") if c.strip()) + ".")
    return "\n".join(out)


def salient_spans(sentence: str) -> list[tuple[str, str]]:
    """(span, kind) for each name, code and number in the sentence, in order, each once."""
    found: list[tuple[str, str]] = []
    for match in SPAN.finditer(sentence):
        kind = match.lastgroup or "name"
        span = match.group().strip()
        if kind == "name" and match.start() == 0:
            first, _, rest = span.partition(" ")
            if first.lower() in OPENERS:
                span = rest if re.fullmatch(NAME, rest) else ""
            elif not rest:
                span = ""  # one capitalised word opening the sentence: every sentence has one
        if not span:
            continue
        if span not in {s for s, _ in found}:
            found.append((span, kind))
    return found


def span_questions(sentence: str, span: str, kind: str) -> list[QA]:
    """Three questions whose answer is `span`, each quoting the rest of `sentence` around a gap."""
    body = sentence.rstrip(" .!?")
    start = body.index(span)
    before, after = body[:start].rstrip(), body[start + len(span) :].lstrip()
    asked = _tidy(f"{before} {ASK[kind]} {after}" if before else f"{ASK[kind].capitalize()} {after}")
    gap = _tidy(f"{before} ___ {after}")
    return [
        QA(f"{asked}?", span, sentence),
        QA(f"According to the handbook: {gap}. What goes in the gap?", span, sentence),
        QA(f"Fill in the {kind}: {gap}.", span, sentence),
    ]


def _tidy(text: str) -> str:
    return re.sub(r"\s+([,;:])", r"\1", text).strip()


def template_qa(chunk_text: str) -> list[QA]:
    """Every template question of a chunk."""
    return [qa for s in sentences(chunk_text) for span, kind in salient_spans(s) for qa in span_questions(s, span, kind)]
