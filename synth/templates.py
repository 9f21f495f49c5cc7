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
from hone.synth.quality import strip_emphasis, table_rows_as_sentences

# The spans a handbook states facts in, most specific first: where two overlap, the earlier kind wins
# ("EUR 1,000" is money, not the number 1,000; "16 weeks" a quantity, not 16). A code: letters and digits
# joined by a dash or run together (TX-40, DL-7, B12); a number: digits with their separators and a
# unit-less time (4410, 8:00, 1,200); a name: capitalised words in a row (Rasmus Oddvar, Kiln House), where
# one capitalised word at the start of a sentence is not a name (it is every sentence's first word), and a
# one-word name used with "the" keeps it ("the Shelf", as people say it); an acronym may open a name ("IT
# Service Desk").
MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
WORD = r"[A-Z][\w'-]*[a-z][\w'-]*"  # a capitalised word with a lower-case letter: "Kiln", not "FH-40"
UNIT = r"(?:minute|hour|day|week|month|year|km|kilometre|metre|page)s?"
KINDS = {
    "email": r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
    "phone": r"\+\d[\d ]{6,}\d",
    "channel": r"(?<![\w&])#[\w-]+",
    "money": rf"(?:EUR|USD|GBP|CHF|SEK|€|\$|£) ?\d[\d,.]*\d(?: per (?:{UNIT}|[a-z]+))?|\b\d[\d,.]* ?(?:EUR|euros?)\b",
    "hours": r"\b\d{1,2}[:.]\d{2} ?(?:to|-|–) ?\d{1,2}[:.]\d{2}\b",
    "date": rf"\b\d{{1,2}} {MONTH}\b|\b{MONTH} \d{{1,2}}\b|\bweek \d{{1,2}}\b",
    # a number with what it counts: "16 weeks", "20 working days", "16 climate zones"
    "quantity": rf"\b\d[\d,.]*(?: [a-z]{{3,}})? (?:{UNIT}|[a-z]{{2,}}s)\b",
    "code": r"\b[A-Z]{1,6}-?\d{1,5}[A-Z]?\b",
    "number": r"\b\d[\d,.:]*\d\b",  # one bare digit ("Glasshouse 3") says too little to be asked for
    "name": rf"\bthe {WORD}\b(?! [A-Z])|\b(?:[A-Z]{{2,5}} )?{WORD}(?:\s+(?:of\s+|the\s+)?{WORD})*",
}
SPAN = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in KINDS.items()))
ASK = {
    "email": "which address", "phone": "what number", "channel": "which channel", "money": "how much",
    "hours": "what hours", "date": "when", "quantity": "how many", "code": "which code", "number": "what number",
    "name": "what name", "term": "what", "phrase": "what phrase",
}  # fmt: skip
# Counting words a quantity can end in that are not what it counts ("3 of us", "2 is").
NOT_COUNTED = frozenset("was has is its this his us yes less across plus as".split())
QUOTED = re.compile(r'"([^"\n]{3,80}?)[.,!?]?"')
EMPHASIS = re.compile(r"\*\*([^*\n]{2,60}?)\*\*|`([^`\n]{2,60}?)`")
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# Capitalised only because they open the sentence: "The Kiln House ..." names Kiln House.
OPENERS = frozenset("the a an our your their its this that these those each every all any in on at for from to".split())


def sentences(text: str) -> list[str]:
    """The chunk's sentences, list items and table rows (cells joined: "IT Service Desk, Piet's team,
    2718."), markdown marks removed; a table's header and separator rows are not facts and are dropped."""
    clean = table_rows_as_sentences(strip_emphasis(text))
    parts = (re.sub(r"^\s*([-+]|\d+[.)])\s+", "", p).strip() for p in SENTENCE.split(clean))
    return [p for p in parts if len(p.split()) >= 4]


def salient_spans(sentence: str, terms: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(span, kind) for each salient span of the sentence, in order, each once: the terms the author
    emphasised (`terms`, see `emphasised`) and quoted phrases first, then names, codes, numbers and the
    other kinds of `KINDS`, none overlapping another."""
    taken: list[tuple[int, int, str, str]] = []
    for term in sorted(terms, key=len, reverse=True):
        for m in re.finditer(rf"(?<!\w){re.escape(term)}(?!\w)", sentence):
            taken.append((m.start(), m.end(), term, "term"))
    taken += [(m.start(1), m.end(1), m.group(1), "phrase") for m in QUOTED.finditer(sentence)]
    for match in SPAN.finditer(sentence):
        kind = match.lastgroup or "name"
        span = _trimmed(match.group().strip(), kind, match.start())
        if span:
            start = match.start() + match.group().index(span)
            taken.append((start, start + len(span), span, kind))
    kept: list[tuple[int, int, str, str]] = []
    for start, end, span, kind in taken:  # earlier sources win an overlap, as listed above
        if not any(start < e and s < end or span == f for s, e, f, _ in kept):
            kept.append((start, end, span, kind))
    return [(span, kind) for _, _, span, kind in sorted(kept)]


def _trimmed(span: str, kind: str, start: int) -> str:
    """The span without what only looks salient: a sentence's capitalised first word, a quantity that
    counts "us"."""
    if kind == "quantity" and span.rsplit(" ", 1)[-1] in NOT_COUNTED:
        return ""
    if kind == "name" and start == 0:
        first, _, rest = span.partition(" ")
        if first.lower() in OPENERS:
            return rest if re.fullmatch(KINDS["name"], rest) else ""
        if not rest:
            return ""  # one capitalised word opening the sentence: every sentence has one
    return span


def emphasised(chunk_text: str) -> frozenset[str]:
    """The terms a chunk sets in bold or code (`corv-guest`, **Fernhold**): the author marked them as
    the ones that matter. A bold label ("**Ground floor:**") is a heading, not a term."""
    terms = {(m.group(1) or m.group(2)).strip() for m in EMPHASIS.finditer(chunk_text)}
    return frozenset(t for t in terms if t and not t.endswith(":") and len(t.split()) <= 6)


def span_questions(sentence: str, span: str, kind: str) -> list[QA]:
    """Three questions whose answer is `span`, each quoting the rest of `sentence` around a gap."""
    body = sentence.rstrip(" .!?")
    start = body.index(span)
    before, after = body[:start].rstrip(), body[start + len(span) :].lstrip()
    ask = f"how many {span.split(' ', 1)[1]}" if kind == "quantity" else ASK[kind]  # "how many weeks"
    asked = _tidy(f"{before} {ask} {after}" if before else f"{ask.capitalize()} {after}")
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
    terms = emphasised(chunk_text)
    return [qa for s in sentences(chunk_text) for span, kind in salient_spans(s, terms) for qa in span_questions(s, span, kind)]


def template_restatements(chunk_text: str) -> list[tuple[str, str]]:
    """(kind, text): the chunk's own sentences in other orders and forms, grounded by construction. Each
    fact is seen again away from the words that came before it in the document, which is what a rewrite
    buys; a stronger generator's restatements (synth/prompts.py) vary the words too."""
    found = sentences(chunk_text)
    if len(found) < 2:
        return []
    return [
        ("key_facts", "Key facts:\n" + "\n".join(f"- {s}" for s in found)),
        ("reordered", " ".join(reversed(found))),
    ]
