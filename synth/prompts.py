"""What the generator is asked, per chunk. Several question styles and several restatements, because a fact
becomes something a model can say only after it has seen it many times in varied form (Allen-Zhu & Li,
Physics of Language Models 3.1: no augmentation, no extraction), and restatements in other words and
orders keep scaling where one paraphrase saturates (Synthetic Continued Pretraining, ICLR 2025).

Every prompt is short and asks for one fixed reply format: small generators follow little else. A
template's text is part of the cache key, so editing one regenerates exactly its replies.
"""

from __future__ import annotations

QA_FORMAT = (
    "Write each one as three lines:\nQuestion: <the question>\nAnswer: <a short answer, copied from the text>\n"
    "Evidence: <the sentence of the text that holds the answer, copied exactly>"
)

QA_STYLES = {
    "direct": "Write {n} questions about the facts in the text below.",
    "indirect": "Write {n} questions a colleague could ask about the text below without using its wording.",
    "wh": "Write {n} questions about the text below that start with Which, Who, When or How many.",
    "scenario": "Write {n} questions about the text below that describe a situation at work and ask what to do, "
    "whom to contact or which to use.",
}

RESTATEMENTS = {
    "key_facts": "List every fact in the text below as short bullet points. Keep every name, number and code.",
    "colleague": "Explain the text below to a new colleague in your own words. Keep every name, number and code.",
    "reordered": "Rewrite the text below so that it starts with its last point and ends with its first.",
    "relations": "Name the people, products, places and codes in the text below and say how each relates to the others.",
}


def qa_prompt(style: str, chunk: str, n: int) -> str:
    return f"{QA_STYLES[style].format(n=n)}\n{QA_FORMAT}\n\nText:\n{chunk}"


def restatement_prompt(kind: str, chunk: str) -> str:
    return f"{RESTATEMENTS[kind]}\n\nText:\n{chunk}"
