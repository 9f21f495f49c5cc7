"""The package's shape: one top-level `hone`, floors that import only downward, no cycles, a light CLI."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLOORS = {"hone.training": 0, "hone.rl": 1, "hone.synth": 1, "hone.cluster": 2}  # cluster -> rl, synth -> training
HEAVY = ("torch", "ray", "transformers", "trl", "deepspeed", "datasets", "peft")


def _modules() -> dict[str, Path]:
    return {
        f"hone.{p.parent.name}.{p.stem}": p
        for floor in ("cluster", "training", "rl", "synth")
        for p in (REPO / floor).glob("*.py")
    }


def _imports(path: Path) -> set[str]:
    """Every hone module `path` imports, at the top or lazily inside a function (both count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_no_module_imports_up_a_floor_or_by_the_old_top_level_names():
    modules = _modules()
    for name, path in modules.items():
        floor = FLOORS[name.rsplit(".", 1)[0]]
        for target in _imports(path):
            top = target.split(".")[0]
            assert top not in ("cluster", "training", "rl", "synth"), f"{name} imports {target}: write hone.{target}"
            package = ".".join(target.split(".")[:2])
            if package in FLOORS:
                assert FLOORS[package] <= floor, f"{name} imports {target}, a floor above it"


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {name: {t for t in _imports(path) if t in modules and t != name} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_cli_module_imports_nothing_heavy():
    assert not _loaded_after("import hone.cluster.cli") & set(HEAVY)


def test_config_yaml_and_data_errors_are_reported_without_heavy_imports(tmp_path):
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    (tmp_path / "typo.yaml").write_text("optim: {lrr: 1e-5}\n")
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
    (tmp_path / "data.yaml").write_text(f"model: {{source: org/model}}\ndata: {{train: [{tmp_path / 'rows.jsonl'}]}}\n")
    rl = "mode: rl\nrl: {rewards: [{type: exact_match}]}\ntrain: {micro_batch_per_device: 1}\n"
    (tmp_path / "rl.yaml").write_text((tmp_path / "data.yaml").read_text() + rl)
    cases = (
        ("broken", "is not valid YAML at line 2"),
        ("typo", "did you mean optim.lr"),
        ("data", "rows.jsonl:2"),
        ("rl", "rows.jsonl:2"),
    )
    for name, expected in cases:
        code = (
            "import contextlib, io\nfrom hone.cluster.cli import main\nerr = io.StringIO()\n"
            f"with contextlib.redirect_stderr(err):\n    assert main(['validate', {str(tmp_path / name) + '.yaml'!r}]) == 1\n"
            f"assert {expected!r} in err.getvalue(), err.getvalue()"
        )
        assert not _loaded_after(code) & set(HEAVY), name


def test_an_installed_hone_is_one_top_level_package(tmp_path):
    """`pip install .` puts `hone` (and its dist-info, and the console script) into site-packages, nothing else."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(REPO)],
        check=True,
        capture_output=True,
    )
    tops = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert tops == ["hone"]
    assert sorted(p.name for p in (target / "hone").iterdir()) == ["cluster", "rl", "synth", "training"]
    assert (target / "hone" / "cluster" / "cli.py").is_file()
