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


BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _blocks(kind: str) -> list[tuple[str, str]]:
    return [(page.name, body) for page in PAGES for lang, body in BLOCK.findall(page.read_text()) if lang == kind]


def _is_config_key(key: str, fields: set[str]) -> bool:
    """A dotted config key, or one inside a field that holds a mapping or list (tune.space.optim.lr)."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in fields for n in range(1, len(parts) + 1))


def test_every_command_and_override_in_a_shell_block_exists():
    from hone.cluster.cli import _parser
    from hone.training.config import config_fields

    commands = set(_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    fields = set(config_fields())
    wrong = []
    for page, body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = line.split("#")[0].split()
            if len(words) < 2 or words[0] != "hone":
                continue
            if words[1] not in commands:
                wrong.append(f"{page}: {line.strip()} (no command {words[1]!r})")
            pipeline = any("pipeline" in w for w in words[2:3])
            for word in words[3:]:
                key = word.split("=", 1)[0]
                if "=" not in word or word.startswith("-") or pipeline or key.startswith(("defaults.", "stages.")):
                    continue  # a pipeline's overrides address its stages
                if not _is_config_key(key, fields):
                    wrong.append(f"{page}: {line.strip()} (no config key {key!r})")
    assert not wrong, wrong


def test_every_config_block_names_only_keys_that_exist():
    import yaml

    from hone.training.config import config_fields

    fields = set(config_fields())
    top = {f.split(".")[0] for f in fields}
    wrong = []
    for page, body in _blocks("yaml"):
        try:
            raw = yaml.safe_load(body)
        except yaml.YAMLError:
            continue  # a fragment, not a whole config
        if not isinstance(raw, dict) or not set(raw) <= top | {"stages", "defaults", "eval", "output_dir"} or "stages" in raw:
            continue  # a pipeline file, or not a config
        for key in _dotted(raw):
            if not _is_config_key(key, fields):
                wrong.append(f"{page}: {key}")
    assert not wrong, wrong


def _dotted(raw: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out += _dotted(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out
