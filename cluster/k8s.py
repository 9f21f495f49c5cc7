"""`hone k8s render CONFIG.yaml`: a KubeRay RayJob for a hone config, so nobody hand-writes YAML.

    hone k8s render examples/quickstart/sft.yaml scaling.use_gpu=true scaling.num_workers=4 \\
        --image REGISTRY/hone:0.1.0 --output sft-job.yaml
    kubectl apply -n hone -f sft-job.yaml

The config is validated first, exactly as `hone run` loads it (pipelines through cluster/pipeline.py).
The output is one multi-document YAML:

- a ConfigMap holding the fully resolved config and the small local files it names (data files, reward
  function modules), mounted read-only at /etc/hone/job in every Ray pod. Not the job's runtime_env:
  the Jobs API shows a runtime_env back to anyone who can list jobs, and the RayJob stores it.
- a NetworkPolicy: this job's pods admit each other on every port, other pods of the namespace only on
  Ray's client-facing ports, nothing from outside the cluster.
- the RayJob: `hone run` (or `hone tune` when the config has a tune.space) on a cluster sized from the
  config: a head that schedules nothing, and worker groups packed from the workers' CPU/GPU requests
  (scaling, the rl roles, custom resources) into pods of at most --gpus-per-node GPUs. The cluster has a
  fixed size (replicas = minReplicas = maxReplicas) because hone checks placement before training with a
  bounded wait, and KubeRay submits a RayJob only once its cluster is ready.

Paths are rewritten for the pods: output_dir moves onto the run volume (<mount>/<run dir name>); local
data files are shipped in the ConfigMap; models and large data must already be on the volume (or a hub
id / URI), and a local path that would not exist in the pod is an error that says what to do.
The objects themselves are written in cluster/k8s_manifests.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from hone.cluster.k8s_manifests import JOB_DIR, Group, Items, RenderOptions, config_map, network_policy, ray_job
from hone.cluster.pipeline import PREVIOUS, AnswerEval, Pipeline, check_answer_eval, load_any
from hone.rl.rewards import RewardError, reward_module_files
from hone.training.config import HoneConfig, PathKind, RewardSpec, is_hub_dataset, map_paths, saved_dict, to_dict
from hone.training.errors import HoneError

MAX_NAME = 47  # KubeRay derives longer resource names from the RayJob's and rejects names past 47 chars
# A ConfigMap is readable by anyone who may `get configmaps` in the namespace and sits unencrypted in etcd
# by default, so only small files travel in one (etcd's own cap is ~1.5 MiB); data beyond that goes on
# the run volume or in object storage.
MAX_SHIPPED_BYTES = 256 * 1024


class _Dumper(yaml.SafeDumper):
    """Plain YAML for kubectl and people: no &anchors for shared lists, multi-line text as | blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _str)


class K8sError(HoneError, ValueError):
    """A render request that cannot become a working RayJob; the message names the field and the fix."""


# ----------------------------------------------------------------------------------------------------
# Entry point


def render(config: str | Path, overrides: list[str], opts: RenderOptions, header: str = "") -> str:
    """The manifests for one config, as YAML text. Everything is checked before anything is returned."""
    _check_options(opts)
    loaded = load_any(config, overrides)
    answer_eval = None
    if isinstance(loaded, Pipeline):
        out, configs, command, answer_eval = loaded.output_dir, [(s.name, s.config) for s in loaded.stages], "run", loaded.eval
        if answer_eval:
            check_answer_eval(answer_eval)
    else:
        cfg = loaded
        configs = [("", cfg)]
        command = _command(cfg, opts.command)
        out = Path(cfg.output_dir)
    name = _job_name(opts.name or f"hone-{configs[0][1].mode}-{out.name}", explicit=bool(opts.name))
    bundle = Bundle(opts.runs_mount)
    shipped = [(stage, ship_config(cfg, bundle, opts, out if stage else None)) for stage, cfg in configs]
    extra: dict[str, Any] = {}
    if answer_eval:  # the pipeline's held-out questions travel with its stages' data
        extra["eval"] = map_paths(
            dataclasses.asdict(answer_eval),
            lambda key, value, kind, _: value and bundle.add(Path(value), f"{out.name}/eval/{Path(value).name}", f"eval.{key}"),
            AnswerEval,
        )
    text = _config_text(shipped, opts, out, extra)
    groups = plan_groups([cfg for _, cfg in configs], opts, tune=command == "tune")
    docs = [
        config_map(name, text, {key: content for key, (_, content) in bundle.files.items()}),
        network_policy(name, opts),
        ray_job(name, f"hone {command} {JOB_DIR}/config.yaml --address auto", groups, opts, bundle.items()),
    ]
    return header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120)


def _command(cfg: HoneConfig, wanted: str) -> str:
    if wanted == "auto":
        wanted = "tune" if cfg.tune.space else "run"
    if wanted == "tune":
        from hone.cluster.tune import check_tune

        check_tune(cfg)
    return wanted


def _check_options(opts: RenderOptions) -> None:
    for flag, value in (("--gpus-per-node", opts.gpus_per_node), ("--cpus-per-node", opts.cpus_per_node)):
        if value < 1:
            raise K8sError(f"{flag}={value} is invalid: a node needs at least 1")
    if opts.active_deadline_seconds < 1:
        raise K8sError(
            f"--active-deadline-seconds={opts.active_deadline_seconds} is invalid: give the seconds a job may run, 1 or more"
        )
    if opts.max_gpu_nodes < 0 or opts.ttl_seconds < 0:
        raise K8sError("--max-gpu-nodes and --ttl-seconds must be 0 or more")
    if opts.command not in ("auto", "run", "tune"):
        raise K8sError(f"--command={opts.command!r} is invalid: use auto, run or tune")
    if not PurePosixPath(opts.runs_mount).is_absolute():
        raise K8sError(f"--runs-mount={opts.runs_mount!r} must be an absolute path such as /mnt/runs")


def _job_name(raw: str, explicit: bool) -> str:
    """A DNS-1123 label of at most 47 chars. A derived name is cleaned and cut; a given one must already fit."""
    if explicit:
        if len(raw) > MAX_NAME or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", raw):
            raise K8sError(
                f"--name={raw!r} is invalid: KubeRay needs a RayJob name of at most {MAX_NAME} lowercase letters, "
                "digits and '-', starting and ending with a letter or digit"
            )
        return raw
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    return re.sub(r"-+", "-", name)[:MAX_NAME].rstrip("-") or "hone-job"


# ----------------------------------------------------------------------------------------------------
# Shipping the config: local paths become pod paths


@dataclass
class Bundle:
    """Files for the ConfigMap: key -> (path under JOB_DIR, bytes)."""

    mount: str
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def on_volume(self, path: str) -> bool:
        return "://" in path or PurePosixPath(path).is_relative_to(self.mount)

    def add(self, local: Path, rel: str, where: str) -> str:
        data = local.read_bytes()
        total = len(data) + sum(len(d) for _, d in self.files.values())
        if total > MAX_SHIPPED_BYTES:
            raise K8sError(
                f"{where}={local}: the local files the config names come to {total // 1024} KiB, more than a "
                f"ConfigMap holds ({MAX_SHIPPED_BYTES // 1024} KiB); copy them onto the run volume "
                f"(kubectl cp) and point {where} at {self.mount}/..."
            )
        key = re.sub(r"[^-._a-zA-Z0-9]", "_", rel)
        self.files[key] = (rel, data)
        return f"{JOB_DIR}/{rel}"

    def items(self) -> Items:
        """ConfigMap keys cannot hold '/', so the volume's items put each file back at its path."""
        files = [{"key": key, "path": rel} for key, (rel, _) in self.files.items()]
        return [{"key": "config.yaml", "path": "config.yaml"}, *files]

    def data_file(self, path: str, where: str) -> str:
        if self.on_volume(path):
            return path
        local = Path(path)
        if local.is_file():
            return self.add(local, f"data/{len(self.files)}-{local.name}", where)
        what = "is a folder" if local.is_dir() else "does not exist here"
        raise K8sError(
            f"{where}={path} {what} and is not on the run volume ({self.mount}): only local files are shipped "
            f"with the job; copy it onto the volume (kubectl cp) and point {where} at {self.mount}/..."
        )


def ship_config(cfg: HoneConfig, bundle: Bundle, opts: RenderOptions, pipeline_out: Path | None) -> dict[str, Any]:
    """The config as the pods must see it: every local path replaced by a shipped file or a volume path."""
    where = f"{pipeline_out.name}/" if pipeline_out else ""

    def ship(key: str, value: Any, kind: PathKind, section: dict[str, Any]) -> Any:
        if kind == "output" and not value:  # synth.cache_dir: the default place, on whichever node runs it
            return value
        if kind == "output":
            return value if bundle.on_volume(value) else f"{opts.runs_mount}/{where}{Path(value).name}"
        if kind == "storage":  # checkpoints: empty means under output_dir
            if value and not bundle.on_volume(value):
                raise K8sError(
                    f"{key}={value} is not on the run volume ({opts.runs_mount}) nor an s3:// / gs:// URI, so "
                    f"the pods cannot share it; set it under {opts.runs_mount}, use a URI, or leave it empty"
                )
            return value
        if kind == "data":  # "" is an unset optional file (synth.replay_prompts); a hub dataset is fetched by the pod
            return bundle.data_file(value, key) if isinstance(value, str) and value and not is_hub_dataset(value) else value
        if kind == "model":
            return _model_source(value, key, bundle)
        return value if bundle.on_volume(value) else _reward_module(section, key, bundle)

    return map_paths(saved_dict(cfg), ship)


def _model_source(source: str, where: str, bundle: Bundle) -> str:
    """A hub id (relative, not a local path) or a volume path passes; a local model cannot travel in a ConfigMap."""
    if source == PREVIOUS or bundle.on_volume(source) or not PurePosixPath(source).is_absolute():
        return source
    what = "is a local model" if Path(source).exists() else "does not exist here"
    raise K8sError(
        f"{where}={source} {what}, which the pods cannot read: copy it onto the run volume (kubectl cp) and pass "
        f"{where}={bundle.mount}/models/{Path(source).name}, or use a hub id"
    )


def _reward_module(spec: dict[str, Any], key: str, bundle: Bundle) -> str:
    """Ship the files of a `module:function` reward (rl/rewards.py reward_module_files: its package, or its
    one module) under a folder of its own, which becomes the reward's path in the pod."""
    folder = "reward-" + key.split("[", 1)[1].split("]", 1)[0]  # rl.rewards[1].path -> reward-1
    try:
        base, files = reward_module_files(spec["path"], spec["function"])
    except RewardError as err:
        raise K8sError(
            f"{key.replace('.path', '.function')}={spec['function']!r}: {err}. It cannot be shipped: put it next to "
            f"the config, or install it in the image and set {key}={bundle.mount}"
        ) from None
    for path in files:
        bundle.add(path, f"{folder}/{path.relative_to(base).as_posix()}", key.replace(".path", ".function"))
    return f"{JOB_DIR}/{folder}"


def _config_text(shipped: list[tuple[str, dict[str, Any]]], opts: RenderOptions, out: Path, extra: dict[str, Any]) -> str:
    defaults = to_dict(HoneConfig())
    if len(shipped) == 1 and not shipped[0][0]:
        return yaml.safe_dump(_changed(shipped[0][1], defaults), sort_keys=False)
    # A pipeline goes as one file with every stage inline and resolved; `name` keeps its run dir.
    stages = [{"name": name, **_changed(raw, defaults)} for name, raw in shipped]
    return yaml.safe_dump({"output_dir": f"{opts.runs_mount}/{out.name}", **extra, "stages": stages}, sort_keys=False)


def _changed(raw: dict[str, Any], defaults: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """Only what differs from the defaults (plus mode and output_dir): a config file of overrides, as
    users write them, which the pod's hone (the same version, from the same image) resolves the same way."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict) and value and default:
            value = _changed(value, default, top=False)
            if value:
                out[key] = value
        elif key == "rewards":  # a list of RewardSpec: each entry as overrides of a default spec
            out[key] = [_changed(spec, dataclasses.asdict(RewardSpec()), top=False) for spec in value]
        elif value != default or (top and key in ("mode", "output_dir")):
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------
# Sizing: Ray actors -> worker groups of identical pods


@dataclass
class Actor:
    cpus: float
    gpus: float
    resources: dict[str, float]
    cpu_field: str  # the config fields that set this actor's request, for error messages
    gpu_field: str


def actors_of(cfg: HoneConfig, copies: int) -> list[Actor]:
    """Every Ray actor a run starts that asks for resources (x copies for concurrent Tune trials)."""
    s = cfg.scaling
    if s.use_gpu and s.gpus_per_worker <= 0:
        raise K8sError(
            f"scaling.gpus_per_worker={s.gpus_per_worker:g} with scaling.use_gpu=true gives the workers no GPU; "
            "set scaling.gpus_per_worker (e.g. 1) or scaling.use_gpu=false"
        )
    gpus = s.gpus_per_worker if s.use_gpu else 0.0
    policy = cfg.rl.policy_resources if cfg.mode == "rl" else {}
    out = [Actor(s.cpus_per_worker, gpus, policy, "scaling.cpus_per_worker", "scaling.gpus_per_worker")] * s.num_workers
    if cfg.mode == "rl":
        roles = ["rollout", "reward"] + (["reference"] if cfg.rl.kl_coef > 0 else [])
        for role in roles:
            r = getattr(cfg.rl, role)
            out += [Actor(r.cpus, r.gpus, r.resources, f"rl.{role}.cpus", f"rl.{role}.gpus")] * r.num_workers
    # An actor asking for nothing runs anywhere, the head included, so it sizes no pod.
    return [a for a in out if a.cpus or a.gpus or a.resources] * copies


def plan_groups(configs: list[HoneConfig], opts: RenderOptions, tune: bool = False) -> list[Group]:
    """Worker groups big enough for the largest stage; errors name the config field and the fix."""
    merged: dict[str, Group] = {}
    for cfg in configs:
        copies = cfg.tune.max_concurrent_trials if tune else 1
        for group in _groups_for(cfg, actors_of(cfg, copies), opts, copies):
            old = merged.get(group.name)
            merged[group.name] = group if old is None else _larger(old, group)
    return list(merged.values())


def _groups_for(cfg: HoneConfig, actors: list[Actor], opts: RenderOptions, copies: int) -> list[Group]:
    for a in actors:
        if a.gpus > opts.gpus_per_node:
            raise K8sError(
                f"{a.gpu_field}={a.gpus:g} is more than --gpus-per-node {opts.gpus_per_node}: one worker cannot span "
                f"nodes; lower {a.gpu_field} or raise --gpus-per-node"
            )
        if a.cpus > opts.cpus_per_node:
            raise K8sError(
                f"{a.cpu_field}={a.cpus:g} is more than --cpus-per-node {opts.cpus_per_node}; lower {a.cpu_field} "
                "or raise --cpus-per-node"
            )
    by_keys: dict[tuple[str, ...], list[Actor]] = {}
    for a in actors:
        by_keys.setdefault(tuple(sorted(a.resources)), []).append(a)
    groups = [_group(keys, pack(members, opts, cfg), opts) for keys, members in by_keys.items()]
    gpu_pods = sum(g.replicas for g in groups if g.gpus)
    if gpu_pods > opts.max_gpu_nodes:
        raise K8sError(_too_many_gpus(cfg, actors, gpu_pods, opts, copies))
    return groups


def _too_many_gpus(cfg: HoneConfig, actors: list[Actor], pods: int, opts: RenderOptions, copies: int) -> str:
    s = cfg.scaling
    total = sum(a.gpus for a in actors)
    trials = f" x tune.max_concurrent_trials {copies}" if copies > 1 else ""
    roles = " plus the rl roles' GPUs" if cfg.mode == "rl" else ""
    return (
        f"scaling.num_workers={s.num_workers} x scaling.gpus_per_worker={s.gpus_per_worker:g}{trials}{roles} needs "
        f"{total:g} GPUs on {pods} nodes of --gpus-per-node {opts.gpus_per_node}, but --max-gpu-nodes "
        f"{opts.max_gpu_nodes} places at most {opts.max_gpu_nodes * opts.gpus_per_node}; lower scaling.num_workers "
        "(or the GPUs per worker) or raise --max-gpu-nodes"
    )


def pack(actors: list[Actor], opts: RenderOptions, cfg: HoneConfig) -> list[list[Actor]]:
    """First-fit decreasing: the fewest pods of at most --gpus-per-node GPUs and --cpus-per-node CPUs.
    STRICT_SPREAD training workers each get a pod of their own, as Ray will place them."""
    pods: list[list[Actor]] = []
    spread = cfg.scaling.placement_strategy == "STRICT_SPREAD"
    for a in sorted(actors, key=lambda a: (a.gpus, a.cpus), reverse=True):
        lone = spread and a.cpu_field == "scaling.cpus_per_worker"
        for pod in [] if lone else pods:
            fits_gpu = sum(b.gpus for b in pod) + a.gpus <= opts.gpus_per_node + 1e-9
            if fits_gpu and sum(b.cpus for b in pod) + a.cpus <= opts.cpus_per_node + 1e-9:
                pod.append(a)
                break
        else:
            pods.append([a])
    return pods


def _group(keys: tuple[str, ...], pods: list[list[Actor]], opts: RenderOptions) -> Group:
    gpus = math.ceil(max(sum(a.gpus for a in pod) for pod in pods) - 1e-9)
    cpus = max(1, math.ceil(max(sum(a.cpus for a in pod) for pod in pods) - 1e-9))
    # A pod advertises as much of each custom resource as its actors ask for (at least 1).
    resources = {k: max(1, math.ceil(max(sum(a.resources.get(k, 0) for a in pod) for pod in pods))) for k in keys}
    memory = max(4, gpus * opts.memory_per_gpu_gib, cpus * opts.memory_per_cpu_gib)
    name = "-".join(re.sub(r"[^a-z0-9]+", "-", k.lower()) for k in keys) or ("gpu" if gpus else "cpu")
    return Group(name, len(pods), cpus, gpus, memory, resources)


def _larger(a: Group, b: Group) -> Group:
    resources = {k: max(a.resources.get(k, 0), b.resources.get(k, 0)) for k in a.resources | b.resources}
    return replace(
        a,
        replicas=max(a.replicas, b.replicas),
        cpus=max(a.cpus, b.cpus),
        gpus=max(a.gpus, b.gpus),
        memory_gib=max(a.memory_gib, b.memory_gib),
        resources=resources,
    )


# ----------------------------------------------------------------------------------------------------
# The `hone k8s render` command

FLAGS = {  # flag -> (RenderOptions field, help); every flag's default is the RenderOptions default
    "--image": ("image", "container image of hone (k8s/Dockerfile)"),
    "--name": ("name", "RayJob name (DNS-1123, at most 47 chars); default hone-<mode>-<run dir name>"),
    "--command": ("command", "auto (tune when the config has tune.space), run or tune"),
    "--gpus-per-node": ("gpus_per_node", "GPUs of one GPU node; no worker pod gets more"),
    "--cpus-per-node": ("cpus_per_node", "CPUs one worker pod may ask for"),
    "--max-gpu-nodes": ("max_gpu_nodes", "GPU nodes the job may take; a bigger request is an error"),
    "--memory-per-gpu-gib": ("memory_per_gpu_gib", "pod memory per GPU"),
    "--memory-per-cpu-gib": ("memory_per_cpu_gib", "pod memory per CPU (CPU-only pods)"),
    "--head-cpus": ("head_cpus", "CPUs of the head pod (it runs the driver, no workers)"),
    "--head-memory-gib": ("head_memory_gib", "memory of the head pod"),
    "--runs-claim": ("runs_claim", "PersistentVolumeClaim for run dirs and caches (k8s/base/pvc.yaml)"),
    "--runs-mount": ("runs_mount", "where the run volume is mounted; output_dir moves under it"),
    "--ttl-seconds": ("ttl_seconds", "seconds the finished job's cluster stays before KubeRay deletes it"),
    "--active-deadline-seconds": ("active_deadline_seconds", "seconds after which a still-running job is stopped"),
    "--grace-seconds": ("grace_seconds", "pod termination grace period; longer than a checkpoint save"),
    "--auth-secret": ("auth_secret", "Secret with key auth_token for Ray token auth"),
    "--wandb-secret": ("wandb_secret", "Secret with key api_key for W&B (optional: offline without it)"),
    "--operator-namespace": ("operator_namespace", "namespace of the KubeRay operator (NetworkPolicy)"),
}


def add_k8s_parser(sub: Any) -> None:
    cmd = sub.add_parser("k8s", help="Kubernetes (KubeRay) manifests for a config")
    actions = cmd.add_subparsers(dest="k8s_action", required=True)
    render_cmd = actions.add_parser("render", help="write a RayJob (+ ConfigMap, NetworkPolicy) for a config")
    render_cmd.add_argument("config", help="YAML config (or pipeline) file")
    render_cmd.add_argument("overrides", nargs="*", help="dotted overrides such as scaling.num_workers=8")
    render_cmd.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    defaults = RenderOptions()
    for flag, (attr, text) in FLAGS.items():
        default = getattr(defaults, attr)
        # dest k8s_*: `--command` must not overwrite the top-level args.command
        render_cmd.add_argument(
            flag,
            dest=f"k8s_{attr}",
            type=type(default),
            default=default,
            metavar=attr.upper(),
            help=f"{text} (default {default})",
        )


def k8s_command(args: Any) -> int:
    """`hone k8s render`: the output file is written only once every check has passed."""
    opts = RenderOptions(**{attr: getattr(args, f"k8s_{attr}") for attr, _ in FLAGS.values()})
    text = render(args.config, args.overrides, opts, header=_header(args, opts))
    if args.output is None:
        print(text, end="")
        return 0
    Path(args.output).write_text(text)
    print(f"wrote {args.output}: kubectl apply -f {args.output}")
    return 0


def _header(args: Any, opts: RenderOptions) -> str:
    """The command that made the file (non-default flags only), so it can be made again."""
    import shlex

    defaults = RenderOptions()
    words = ["hone", "k8s", "render", args.config, *args.overrides]
    for flag, (attr, _) in FLAGS.items():
        if getattr(opts, attr) != getattr(defaults, attr):
            words += [flag, str(getattr(opts, attr))]
    return f"# Made by: {shlex.join(words)}\n# Apply: kubectl apply -n NAMESPACE -f FILE (k8s/README.md)\n"
