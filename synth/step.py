"""Chunks to checked training rows, given any generator: plan the prompts, ask the generator only for replies
the cache lacks, then parse, filter and count. The generator is a function (prompts -> replies), so the
same step runs with the model being tuned, a bigger local one on an actor pool, or an HTTP endpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hone.synth.cache import ReplyCache, reply_key
from hone.synth.documents import Chunk
from hone.synth.parse import QA, parse_qa, parse_restatement
from hone.synth.prompts import QA_STYLES, RESTATEMENTS, qa_prompt, restatement_prompt
from hone.synth.quality import EvalOverlap, NearDuplicates, normalize, why_ungrounded
from hone.synth.templates import template_qa, template_restatements

Generate = Callable[[list[str]], list[str]]  # prompts -> one reply each, in order


class Prompted(Protocol):
    """What `missing` and `fetch` need of a request: its prompt and the cache key its reply is kept under."""

    @property
    def prompt(self) -> str: ...

    @property
    def key(self) -> str: ...


P = TypeVar("P", bound=Prompted)


@dataclass(frozen=True)
class Recipe:
    """How much to ask for, per chunk."""

    questions_per_style: int = 5
    styles: tuple[str, ...] = tuple(QA_STYLES)
    restatements: tuple[str, ...] = tuple(RESTATEMENTS)
    samples: int = 1  # replies per prompt (a sampling generator writes different ones)
    min_restatement_words: int = 12
    templates: bool = True  # generator-free questions on every name, code and number (synth/templates.py)
    # The pairs kept per answer: a name the documents repeat everywhere ("Kiln House") would otherwise take
    # the training budget from the facts stated once.
    max_pairs_per_answer: int = 6


@dataclass(frozen=True)
class Request:
    chunk: Chunk
    kind: str  # "qa" or "restatement"
    template: str  # the QA style or the restatement kind
    sample: int
    prompt: str
    key: str


@dataclass
class ChunkReport:
    doc: str
    chunk: int
    heading: str
    qa_kept: int = 0
    restatements_kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def exposures(self) -> int:
        """How many times training sees this chunk's facts: the text itself, each restatement, each pair."""
        return 1 + self.restatements_kept + self.qa_kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "doc": self.doc, "chunk": self.chunk, "heading": self.heading, "qa_kept": self.qa_kept,
            "restatements_kept": self.restatements_kept, "rejected": dict(self.rejected), "exposures": self.exposures,
        }  # fmt: skip


@dataclass
class Synthesis:
    qa_rows: list[dict[str, Any]]  # chat rows for SFT (and RL prompts), each with its source and evidence
    text_rows: list[dict[str, Any]]  # text rows for continued pretraining: the chunks and their restatements
    chunks: list[ChunkReport]


def plan(chunks: list[Chunk], recipe: Recipe, generator: str) -> list[Request]:
    requests = []
    for chunk in chunks:
        asks = [("qa", s, qa_prompt(s, chunk.text, recipe.questions_per_style)) for s in recipe.styles]
        asks += [("restatement", k, restatement_prompt(k, chunk.text)) for k in recipe.restatements]
        for kind, template, prompt in asks:
            for sample in range(recipe.samples):
                requests.append(Request(chunk, kind, template, sample, prompt, reply_key(chunk.text, generator, prompt, sample)))
    return requests


def missing(requests: list[P], cache: ReplyCache) -> list[P]:
    return [r for r in requests if r.key not in cache]


def fetch(todo: list[P], generate: Generate, cache: ReplyCache, batch_size: int) -> Iterator[int]:
    """Ask for the replies in `todo`, a batch at a time, caching each batch as it arrives (a kill loses
    at most the batch in flight); yields how many were done after each batch, for a progress bar."""
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        replies = generate([r.prompt for r in batch])
        if len(replies) != len(batch):
            raise RuntimeError(f"the generator returned {len(replies)} replies for {len(batch)} prompts")
        for request, reply in zip(batch, replies, strict=True):
            cache.put(request.key, {"reply": reply})
        yield len(batch)


def assemble(chunks: list[Chunk], requests: list[Request], cache: ReplyCache, recipe: Recipe, heldout: EvalOverlap) -> Synthesis:
    """Every cached reply parsed and filtered into rows, with a count of what was kept and why the rest was not."""
    reports = {c.key: ChunkReport(c.doc, c.index, c.heading) for c in chunks}
    out = Synthesis([], [{"text": c.text, "source": c.doc, "chunk": c.index, "kind": "original"} for c in chunks], [])
    questions, restatements = NearDuplicates(), NearDuplicates()
    answers: Counter = Counter()
    for request in requests:
        reply = str((cache.get(request.key) or {}).get("reply", ""))
        report, chunk = reports[request.chunk.key], request.chunk
        where = {"source": chunk.doc, "chunk": chunk.index}
        if request.kind == "restatement":
            text = parse_restatement(reply, recipe.min_restatement_words)
            reason = "too short" if text is None else "near-duplicate" if restatements.seen(text) else None
            if reason:
                report.rejected[f"restatement {reason}"] += 1
                continue
            out.text_rows.append({"text": text, **where, "kind": request.template})
            report.restatements_kept += 1
            continue
        pairs, malformed = parse_qa(reply)
        if malformed:
            report.rejected["malformed"] += malformed
        _keep_pairs(pairs, request.template, chunk, report, out, heldout, questions, answers, recipe)
    if recipe.templates:
        for chunk in chunks:
            for kind, text in template_restatements(chunk.text):
                out.text_rows.append({"text": text, "source": chunk.doc, "chunk": chunk.index, "kind": kind})
                reports[chunk.key].restatements_kept += 1
            _keep_pairs(template_qa(chunk.text), "template", chunk, reports[chunk.key], out, heldout, questions, answers, recipe)
    out.chunks = list(reports.values())
    return out


def _keep_pairs(
    pairs: list[QA],
    style: str,
    chunk: Chunk,
    report: ChunkReport,
    out: Synthesis,
    heldout: EvalOverlap,
    seen: NearDuplicates,
    answers: Counter,
    recipe: Recipe,
) -> None:
    for qa in pairs:
        reason = why_ungrounded(qa.answer, qa.evidence, chunk.text)
        if reason is None and heldout.overlaps(qa.question):
            reason = "overlaps an evaluation question"
        if reason is None and seen.seen(qa.question):
            reason = "near-duplicate"
        if reason is None and answers[normalize(qa.answer)] >= recipe.max_pairs_per_answer:
            reason = "answer asked enough already"
        if reason:
            report.rejected[reason] += 1
            continue
        messages = [{"role": "user", "content": qa.question}, {"role": "assistant", "content": qa.answer}]
        out.qa_rows.append(
            {"messages": messages, "source": chunk.doc, "chunk": chunk.index, "evidence": qa.evidence, "style": style}
        )
        report.qa_kept += 1
        answers[normalize(qa.answer)] += 1


def by_document(chunks: list[ChunkReport]) -> dict[str, dict[str, Any]]:
    """The per-chunk counts summed per document."""
    docs: dict[str, dict[str, Any]] = {}
    for c in chunks:
        d = docs.setdefault(c.doc, {"chunks": 0, "qa_kept": 0, "restatements_kept": 0, "rejected": Counter(), "exposures": 0})
        d["chunks"] += 1
        d["qa_kept"] += c.qa_kept
        d["restatements_kept"] += c.restatements_kept
        d["rejected"].update(c.rejected)
        d["exposures"] += c.exposures
    return {doc: {**d, "rejected": dict(d["rejected"])} for doc, d in docs.items()}
