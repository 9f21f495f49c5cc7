"""`hone submit CONFIG.yaml`: run a config on a remote Ray cluster through the Ray Jobs API (no SSH).

    hone submit examples/quickstart/sft.yaml --address http://127.0.0.1:8265 [key=value ...] [--wait]

Reads top to bottom: the config is checked here exactly as `hone validate` checks it (cli.py does that
before calling in) -> every local file it names (data, eval files, reward modules, a local model) is
copied into a fresh folder with the resolved config, which names them by relative paths -> refuse if
that is too big to upload -> reach the cluster (bounded wait, token checked) -> submit `hone run` (or
`hone tune`) with the folder as the job's working_dir -> print the job id; with --wait, follow its
output and exit 0 only if it SUCCEEDED.

Inside the job the entrypoint passes `--address auto`: the job supervisor sets RAY_ADDRESS to its own
cluster, and "auto" joins it. ray_session() itself keeps ignoring RAY_ADDRESS, so a RAY_ADDRESS exported
for `hone jobs` (a dashboard URL) can never turn a local `hone run` into an attempt to join a cluster.

Nothing secret goes into the job: the Jobs API shows runtime_env back to anyone who can list jobs, so
the job gets only its working_dir. WANDB_API_KEY and the like come from the cluster nodes' environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from hone.cluster.jobs import JobsError, connect, follow, guarded
from hone.cluster.pipeline import PREVIOUS, AnswerEval, Pipeline
from hone.rl.rewards import RewardError, reward_module_files
from hone.training.config import HoneConfig, PathKind, is_hub_dataset, map_paths, saved_dict
from hone.training.data import DataError, folder_files
from hone.training.models import looks_like_path

# The dashboard refuses request bodies over 100 MiB (ray_constants.DASHBOARD_CLIENT_MAX_SIZE), and the
# working_dir is uploaded as one zip in one request. hone stops below that with room for zip overhead.
MAX_SHIP_BYTES = 90 * 1024**2
SHIPPED = "files"  # the folder inside the working_dir that holds the shipped files


class _Shipment:
    """A working_dir being filled: local paths are copied in once each and named by relative paths."""

    def __init__(self, shared: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hone-submit-"))
        self.shared = [Path(p).expanduser().resolve() for p in shared]
        self.files: dict[Path, str] = {}  # local path -> its relative path in the working_dir
        self.folders: dict[Path, str] = {}  # a data folder -> the folder its files go to

    def add(self, value: str, field: str) -> str:
        """The config value to ship for a local path: its path inside the job's working dir. A folder
        goes as the files the run reads from it (training/data.py folder_files), nothing else."""
        path = Path(value).expanduser().resolve()
        if any(path.is_relative_to(s) for s in self.shared):
            return str(path)  # on storage the cluster sees at the same path (--shared)
        if not path.exists():
            raise JobsError(f"{field}: {path} does not exist here, so it cannot be shipped with the job")
        if path in self.folders:
            return self.folders[path]
        if path.is_dir() and field.startswith("data."):
            home = f"{SHIPPED}/{len(self.files) + len(self.folders)}-{path.name}"
            try:
                files = folder_files(path)
            except DataError as err:
                raise JobsError(f"{field}: {err}") from None
            self.folders[path] = home
            for file in files:
                self.files.setdefault(file, f"{home}/{file.relative_to(path).as_posix()}")
            return home
        if path not in self.files:
            self.files[path] = f"{SHIPPED}/{len(self.files) + len(self.folders)}-{path.name}"
        return self.files[path]

    def add_module(self, folder: str, function: str, field: str) -> str:
        """A reward function's module (or top-level package) alone, in a folder of its own that becomes the
        reward's `path`. Shipping the whole config folder would drag along everything in it."""
        try:
            base, files = reward_module_files(folder, function)
        except RewardError as err:
            raise JobsError(f"{field}: {err}") from None
        if any(base.is_relative_to(s) for s in self.shared):
            return str(base)
        home = f"{SHIPPED}/{len(self.files)}-reward"
        for path in files:
            self.files.setdefault(path, f"{home}/{path.relative_to(base).as_posix()}")
        return home

    def check_size(self, limit: int) -> None:
        sizes = {path: _size(path) for path in self.files}
        total = sum(sizes.values())
        if total <= limit:
            return
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        listed = ", ".join(f"{p} ({_mib(n)})" for p, n in biggest)
        raise JobsError(
            f"the local files this config names add up to {_mib(total)}, over the {_mib(limit)} hone ships with a job "
            f"(largest: {listed}). Put them on storage every cluster node sees at the same path (a shared "
            "filesystem, also mounted here so hone can check them) and pass --shared DIR, or give model.source as a hub id"
        )

    def manifest(self) -> str:
        """What goes with the job, largest first: printed before it is sent."""
        sizes = sorted(((rel, _size(path)) for path, rel in self.files.items()), key=lambda item: -item[1])
        shown = [f"  {_mib(n):>10}  {rel}" for rel, n in sizes[:20]]
        more = [f"  ... and {len(sizes) - 20} more"] if len(sizes) > 20 else []
        total = _mib(sum(n for _, n in sizes))
        return "\n".join([f"hone: shipping {len(sizes)} local files ({total}) with the job:", *shown, *more])

    def copy(self) -> None:
        (self.root / SHIPPED).mkdir(exist_ok=True)
        for path, rel in self.files.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():  # a local model: its symlinks are followed (a hub cache is made of them), dotfiles left
                shutil.copytree(path, self.root / rel, ignore=shutil.ignore_patterns(".*"))
            else:
                shutil.copy2(path, self.root / rel)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 1024**2:.1f} MiB"


def ship_config(cfg: HoneConfig, shipment: _Shipment) -> dict[str, Any]:
    """The resolved config as a dict whose local paths point into the working dir. output_dir stays an
    absolute path: it names a folder on the cluster (shared storage for a multi-node run)."""

    def ship(key: str, value: Any, kind: PathKind, section: dict[str, Any]) -> Any:
        if kind == "output":  # an empty synth.cache_dir is the default place, on whichever node runs it
            return str(Path(value).expanduser().resolve()) if value else value
        if kind == "module":
            return shipment.add_module(value, section["function"], key)
        if kind == "data" and isinstance(value, str) and value and not is_hub_dataset(value):  # "": an unset optional file
            return shipment.add(value, key)
        if kind == "model" and value != PREVIOUS and looks_like_path(value):
            return shipment.add(value, key)
        return value  # a hub id, `previous`, eval as a fraction, storage (already shared or a URI)

    return map_paths(saved_dict(cfg), ship)


def submit_config(args: argparse.Namespace, cfg: HoneConfig) -> int:
    """One config: `hone tune` when it has a tune.space (as `hone validate` checks it), else `hone run`."""
    command = "tune" if cfg.tune.space else "run"
    _warn_overwrite([cfg])
    return _submit(args, command, lambda shipment: ship_config(cfg, shipment))


def submit_pipeline(args: argparse.Namespace, pipeline: Pipeline) -> int:
    _warn_overwrite([s.config for s in pipeline.stages])
    return _submit(args, "run", lambda shipment: ship_pipeline(pipeline, shipment))


def ship_pipeline(pipeline: Pipeline, shipment: _Shipment) -> dict[str, Any]:
    """A pipeline ships as one pipeline file with every stage inline, its paths rewritten
    (`model.source: previous` stays: it names the previous stage's export on the cluster), and its
    `eval:` questions file with it."""
    shipped = [{"name": s.name, **ship_config(s.config, shipment)} for s in pipeline.stages]
    raw: dict[str, Any] = {"output_dir": str(pipeline.output_dir.expanduser().resolve()), "stages": shipped}
    if pipeline.eval:
        questions = dataclasses.asdict(pipeline.eval)
        raw["eval"] = map_paths(questions, lambda key, value, kind, _: value and shipment.add(value, f"eval.{key}"), AnswerEval)
    return raw


def _warn_overwrite(configs: list[HoneConfig]) -> None:
    if any(c.overwrite for c in configs):
        print(
            "hone: overwrite=true is not sent with the job (a retried job would replace its run again); on the "
            "cluster a run dir holding a different run is refused: give the run a new output_dir",
            flush=True,
        )


def _submit(args: argparse.Namespace, command: str, build: Any, limit: int = MAX_SHIP_BYTES) -> int:
    shipment = _Shipment(args.shared or [])
    try:
        raw = build(shipment)
        shipment.check_size(limit)
        if shipment.files:
            print(shipment.manifest(), flush=True)
        client = connect(
            args.address, args.token_file, args.insecure_http
        )  # after every local check: a bad config never reaches it
        shipment.copy()
        (shipment.root / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        entrypoint = f"hone {command} config.yaml --address auto"
        job_id = guarded(
            client.get_address(),
            lambda: client.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": str(shipment.root)},
                metadata={"hone_config": Path(args.config).name},
            ),
        )
    finally:
        shipment.remove()
    url = client.get_address()
    print(f"hone: submitted job {job_id} to {url}: {entrypoint} ({len(shipment.files)} local paths shipped)")
    # output_dir was resolved here; on the cluster it must be a path the job can write (shared storage).
    print(f"hone: output_dir on the cluster: {raw['output_dir']}")
    if not args.wait:
        print(f"hone: follow it with: hone jobs logs {job_id} --follow --address {url}")
        return 0
    status = follow(client, job_id)
    print(f"hone: job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def add_submit_parser(sub: Any) -> None:
    from hone.cluster.jobs import add_client_options

    cmd = sub.add_parser("submit", help="check a config here, then run it on a Ray cluster as a job")
    cmd.add_argument("config", help="YAML file of config overrides (or a pipeline file)")
    cmd.add_argument("overrides", nargs="*", help="dotted overrides such as optim.lr=1e-5")
    add_client_options(cmd)
    cmd.add_argument("--wait", action="store_true", help="follow the job's output until it ends; exit 1 unless it succeeded")
    cmd.add_argument(
        "--shared",
        action="append",
        metavar="DIR",
        help="a folder every cluster node sees at the same path (repeatable): files under it are not shipped",
    )
