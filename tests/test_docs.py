"""The README front page stays short, and every link in it and in docs/ reaches a file and a heading that
exist (the pages were split from one README: a moved section must not leave a dead link behind)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings (outside code blocks), and explicit <a id=...> ones."""
    found, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
        found |= set(re.findall(r'<a id="([^"]+)"></a>', line))
    return found


def test_the_front_page_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 10_000


def test_every_link_reaches_a_file_and_heading_that_exist():
    dead = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            if not where.exists():
                dead.append(f"{page.name}: {target} (no such file)")
            elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
                dead.append(f"{page.name}: {target} (no such heading)")
    assert not dead, dead
