"""What a generated item must pass to be kept: grounded in its chunk, not a near-copy of one kept before,
not a copy of an evaluation question. Pure functions: the rules are the documentation.

Grounding rule (the stricter of the two the issue allows, because a small generator invents freely): the
answer must appear in the chunk, and where the item gives an evidence quote, the quote must appear in the
chunk and hold the answer. "Appear" compares normalized text: case folded, quotes and dashes unified,
whitespace collapsed, markdown emphasis dropped, so a generator's re-spacing or capitalisation does not reject a faithful answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Eval overlap: a candidate question is dropped when at least this share of its content-word trigrams
# occurs in one evaluation question (unigrams for questions with fewer than three content words).
OVERLAP_N = 3
OVERLAP_MAX = 0.5
# Near-duplicates: word-trigram Jaccard similarity at or above this with an item already kept.
DUPLICATE_MIN = 0.7
# Words that carry no fact: two questions that share only these do not overlap.
STOPWORDS = frozenset(
    "a an the of to in on at for by with from and or is are was were be been do does did what which who whom whose "
    "when where why how many much it its this that these those there their they he she his her i we you our your "
    "as if than then so can could should would will shall may might must has have had not no".split()
)

_TRANSLATE = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "\u00a0": " "})


def strip_emphasis(text: str) -> str:
    """Markdown emphasis marks removed: a quote of "**Fernhold** is" reads "Fernhold is"."""
    return re.sub(r"[*_`]+", "", text)


def table_rows_as_sentences(text: str) -> str:
    """Each table row as its cells joined ("| IT Service Desk | 2718 |" -> "IT Service Desk, 2718."), the header
    and separator rows dropped: how a quote of a table row reads, and how the templates read a table."""
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


def normalize(text: str) -> str:
    text = strip_emphasis(unicodedata.normalize("NFKC", text).translate(_TRANSLATE).casefold())
    return re.sub(r"\s+", " ", text).strip()


def _core(text: str) -> str:
    """An answer without the punctuation a generator wraps it in ("Ms. Ilona Vaara." -> "ms. ilona vaara")."""
    return normalize(text).strip(" .,;:!?\"'()[]")


def _holds(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words: "4410" is not found in "44100", nor "in" in "within"."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def why_ungrounded(answer: str, evidence: str, chunk: str) -> str | None:
    """None for a grounded item, else the reason it is rejected (the report counts these)."""
    core, source = _core(answer), normalize(chunk)
    if not core:
        return "empty answer"
    if evidence.strip():
        quote = _core(evidence)
        if quote not in source and quote not in normalize(table_rows_as_sentences(chunk)):
            return "evidence not in chunk"
        if not _holds(quote, core):
            return "answer not in its evidence"
    if not _holds(source, core):
        return "answer not in chunk"
    return None


def words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", normalize(text))


def content_ngrams(text: str, n: int = OVERLAP_N) -> set[tuple[str, ...]]:
    content = [w for w in words(text) if w not in STOPWORDS]
    if len(content) < n:
        return {(w,) for w in content}
    return {tuple(content[i : i + n]) for i in range(len(content) - n + 1)}


class EvalOverlap:
    """The evaluation questions a generated question must not copy. The generator never sees them; this
    drops what it writes that copies one anyway (the same fact asked in the same words). A question on the
    same fact in other words is kept: learning the fact from it is the point, and word-order trigrams of
    content words tell the two apart."""

    def __init__(self, questions: Iterable[str]) -> None:
        self.grams = [g for g in (content_ngrams(q) for q in questions) if g]

    def overlaps(self, question: str) -> bool:
        mine = content_ngrams(question)
        return bool(mine) and any(len(mine & other) / len(mine) >= OVERLAP_MAX for other in self.grams)


class NearDuplicates:
    """Items already kept, to drop ones that say the same thing in (nearly) the same words."""

    def __init__(self) -> None:
        self.kept: list[set[tuple[str, ...]]] = []

    def seen(self, text: str) -> bool:
        """Whether `text` nearly repeats a kept item; if not, it is kept from now on."""
        w = words(text)
        grams = {tuple(w[i : i + 3]) for i in range(max(len(w) - 2, 1))}
        if any(len(grams & k) / len(grams | k) >= DUPLICATE_MIN for k in self.kept):
            return True
        self.kept.append(grams)
        return False
