"""A generator's reply to items. Generators, small ones most, reply loosely: numbered, bold labels, a
missing answer, a question with no question. What cannot be read is counted as malformed and skipped,
never raised: one bad reply must not end a synthesis of thousands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LABELS = {"q": "question", "question": "question", "a": "answer", "answer": "answer"} | {
    "e": "evidence", "evidence": "evidence", "quote": "evidence", "source": "evidence"
}  # fmt: skip
LINE = re.compile(r"^\s*(?:[-*]\s*|\d+[.)]\s*)?\**\s*([A-Za-z]+)\s*\**\s*[:：]\s*\**\s*(.*?)\s*$")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    evidence: str = ""


def parse_qa(reply: str) -> tuple[list[QA], int]:
    """The question/answer pairs in `reply` and how many started but could not be read (a question with
    no answer, an answer with no question, an empty field)."""
    pairs: list[QA] = []
    malformed = 0
    current: dict[str, str] = {}
    field = ""

    def finish() -> None:
        nonlocal malformed
        if not current:
            return
        question, answer = current.get("question", "").strip(), current.get("answer", "").strip()
        if question and answer:
            pairs.append(QA(question, answer, current.get("evidence", "").strip().strip('"“”')))
        else:
            malformed += 1
        current.clear()

    for line in reply.splitlines():
        match = LINE.match(line)
        label = LABELS.get(match.group(1).lower()) if match else None
        if match and label:
            if label == "question" or label in current:  # a new pair starts
                finish()
            field = label
            current[field] = match.group(2)
        elif field in ("question", "evidence") and field in current and line.strip():
            # A question or quote that wraps onto the next line. Answers are short, and a line after one
            # is more often the generator's chatter than more answer.
            current[field] = f"{current[field]} {line.strip()}".strip()
    finish()
    return pairs, malformed


def parse_restatement(reply: str, min_words: int) -> str | None:
    """The rewritten text, or None when the reply is too short to restate anything."""
    text = reply.strip()
    return text if len(text.split()) >= min_words else None
