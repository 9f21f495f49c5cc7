"""A folder of documents to chunks: the unit that synthesis writes questions and restatements for.

A chunk is a few paragraphs under one heading, small enough that a small generator can hold all of it in
view and that every question written from it can be checked against it (`quality.grounding`). Its key is
the hash of its text, so an edit to one paragraph regenerates that chunk only.
"""

from __future__ import annotations

import hashlib
import html.parser
import re
from dataclasses import dataclass
from pathlib import Path

from hone.training.data import DataError, folder_files, is_saved_dataset, read_utf8

DOCUMENT_SUFFIXES = {".md", ".txt", ".html", ".htm"}
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
LIST_ITEM = re.compile(r"^([-*+]|\d+[.)]|\|)\s")  # list items and table rows keep their own lines
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Chunk:
    doc: str  # the document's path relative to the folder
    index: int  # its place in the document, from 0
    heading: str  # the nearest heading above it ("" before the first)
    text: str

    @property
    def key(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def words(self) -> int:
        return len(self.text.split())


def read_documents(folder: Path) -> dict[str, str]:
    """Each document's text by its path relative to `folder`: .md and .txt as they are, HTML as the text a
    reader sees (no markup, scripts or styles). A folder with none of them is refused by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of documents; name a folder holding .md, .txt or .html files")
    if is_saved_dataset(folder):
        raise DataError(f"{folder} is a saved `datasets` directory, not a folder of documents: name it in data.train instead")
    docs = {}
    for path in folder_files(folder, DOCUMENT_SUFFIXES):
        text = read_utf8(path)
        if path.suffix.lower() in (".html", ".htm"):
            text = html_text(text)
        if text.strip():
            docs[path.relative_to(folder).as_posix()] = text
    if not docs:
        raise DataError(
            f"{folder} holds no readable document: synthesis reads non-empty {', '.join(sorted(DOCUMENT_SUFFIXES))} files "
            "(hidden files are skipped); convert PDFs and office files to text first"
        )
    return docs


def chunk_document(doc: str, text: str, max_words: int) -> list[Chunk]:
    """Paragraphs packed into chunks of at most `max_words` words that never cross a heading; a paragraph
    longer than that is split between sentences. A chunk starts with its heading, so a question written
    from it can name what the section is about."""
    chunks: list[Chunk] = []
    for heading, paragraphs in _sections(text):
        prefix = f"{heading}\n\n" if heading else ""
        budget = max(max_words - len(heading.split()), 1)
        for body in _pack([piece for p in paragraphs for piece in _split_long(p, budget)], budget, "\n\n"):
            chunks.append(Chunk(doc, len(chunks), heading, prefix + body))
    return chunks


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, its paragraphs) in order; paragraphs are blank-line separated, wrapped lines joined."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    lines: list[str] = []

    def end_paragraph() -> None:
        if lines:
            sections[-1][1].append("".join(("\n" if LIST_ITEM.match(line) else " ") + line for line in lines).strip())
            lines.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if match := HEADING.match(line):
            end_paragraph()
            sections.append((match.group(1), []))
        elif line:
            lines.append(line)
        else:
            end_paragraph()
    end_paragraph()
    return [(h, ps) for h, ps in sections if ps]


def _split_long(paragraph: str, max_words: int) -> list[str]:
    if len(paragraph.split()) <= max_words:
        return [paragraph]
    out = []
    for piece in _pack(SENTENCE_END.split(paragraph), max_words, " "):
        words = piece.split()  # a single sentence over the limit is cut between words: rare (a list run together)
        out += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    return out


def _pack(pieces: list[str], max_words: int, joiner: str) -> list[str]:
    packed: list[str] = []
    count = 0
    for piece in pieces:
        words = len(piece.split())
        if packed and count + words <= max_words:
            packed[-1] += joiner + piece
            count += words
        else:
            packed.append(piece)
            count = words
    return packed


class _TextOfHtml(html.parser.HTMLParser):
    BLOCKS = {"p", "div", "section", "article", "li", "tr", "br", "table", "ul", "ol", "blockquote", "pre"}
    SKIP = {"script", "style", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.out.append(f"\n\n{'#' * int(tag[1])} ")  # headings keep their level: chunks break there
        elif tag in self.BLOCKS:
            self.out.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(self.skipping - 1, 0)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCKS:
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(re.sub(r"\s+", " ", data))


def html_text(markup: str) -> str:
    """The text of an HTML page, paragraphs and headings kept (headings as markdown ones). The standard
    library's parser is enough for text: no rendering, no network, no dependency."""
    parser = _TextOfHtml()
    parser.feed(markup)
    parser.close()
    lines = [line.strip() for line in "".join(parser.out).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
