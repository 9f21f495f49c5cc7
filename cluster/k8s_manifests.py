"""The Kubernetes objects of one hone RayJob, built from render options and sized worker groups:
the ConfigMap that carries the config, the NetworkPolicy, and the RayJob with its hardened pods.
cluster/k8s.py decides what goes in (paths, sizes); this module only writes it down."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

JOB_DIR = "/etc/hone/job"  # where the ConfigMap is mounted in every Ray pod
UID = 1000  # the image's user (k8s/Dockerfile)
RAY_VERSION = "2.60.0"
# Pods of the same namespace may reach these: GCS, dashboard/Jobs API, Ray client, Serve, metrics.
CLIENT_PORTS = (6379, 8265, 10001, 8000, 8080)
SPOT_LABELS = (  # the labels GKE, EKS and AKS put on spot nodes; the head must not land on one
    {"key": "cloud.google.com/gke-spot", "operator": "DoesNotExist"},
    {"key": "eks.amazonaws.com/capacityType", "operator": "NotIn", "values": ["SPOT"]},
    {"key": "kubernetes.azure.com/scalesetpriority", "operator": "NotIn", "values": ["spot"]},
)


Items = list[dict[str, str]]


@dataclass
class RenderOptions:
    image: str = "hone:latest"
    name: str = ""  # default: hone-<mode>-<run dir name>, cut to 47 chars
    command: str = "auto"  # auto: tune when the config has a tune.space, else run
    gpus_per_node: int = 8
    cpus_per_node: int = 32
    max_gpu_nodes: int = 4
    memory_per_gpu_gib: int = 64
    memory_per_cpu_gib: int = 4
    head_cpus: int = 2
    head_memory_gib: int = 8
    runs_claim: str = "hone-runs"
    runs_mount: str = "/mnt/runs"
    ttl_seconds: int = 300  # how long the finished job's cluster stays for a look at its logs
    # A job still running after this is stopped and its cluster deleted: a hung run never holds GPU nodes
    # for good. Three days; raise it for longer trainings.
    active_deadline_seconds: int = 3 * 24 * 3600
    grace_seconds: int = 600  # longer than a checkpoint save: SIGTERM -> Ray Train checkpoints -> SIGKILL
    auth_secret: str = "hone-ray-auth"
    wandb_secret: str = "hone-wandb"
    operator_namespace: str = "kuberay-system"


@dataclass
class Group:
    name: str
    replicas: int
    cpus: int
    gpus: int
    memory_gib: int
    resources: dict[str, int]


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "hone", "app.kubernetes.io/instance": name}


def config_map(name: str, config_text: str, files: dict[str, bytes]) -> dict[str, Any]:
    data = {"config.yaml": config_text}
    binary = {}
    for key, content in files.items():
        try:
            data[key] = content.decode("utf-8")
        except UnicodeDecodeError:  # parquet, arrow: ConfigMaps carry bytes as base64 binaryData
            binary[key] = base64.b64encode(content).decode("ascii")
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-config", name), "data": data}
    if binary:
        doc["binaryData"] = binary
    return doc


def _meta(resource: str, instance: str) -> dict[str, Any]:
    return {"name": resource, "labels": _labels(instance)}


def network_policy(name: str, opts: RenderOptions) -> dict[str, Any]:
    """Same rules as k8s/base/networkpolicy.yaml: the job's pods on every port (Ray's worker, object and
    NCCL ports are dynamic), the namespace's pods on the client ports, the operator on the dashboard."""
    own = {"podSelector": {"matchLabels": _labels(name)}}
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": opts.operator_namespace}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, name),
        "spec": {
            "podSelector": {"matchLabels": _labels(name)},
            "policyTypes": ["Ingress", "Egress"],
            # Out: anywhere but the cloud metadata address (node and workload credentials); the pods run
            # the user's reward code and, when enabled, trust_remote_code models.
            "egress": [{"to": [{"ipBlock": block} for block in EGRESS_BLOCKS]}],
            "ingress": [
                {"from": [own]},
                {"from": [{"podSelector": {}}], "ports": [{"port": p, "protocol": "TCP"} for p in CLIENT_PORTS]},
                {"from": [operator], "ports": [{"port": 8265, "protocol": "TCP"}]},
            ],
        },
    }


def ray_job(name: str, entrypoint: str, groups: list[Group], opts: RenderOptions, items: Items) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(name, name),
        "spec": {
            "entrypoint": entrypoint,
            # Delete the cluster (and release its GPUs) ttlSecondsAfterFinished after the job ends.
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": opts.ttl_seconds,
            "activeDeadlineSeconds": opts.active_deadline_seconds,
            "submitterPodTemplate": _submitter(name, opts),
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": False,
                "authOptions": {"mode": "token", "secretName": opts.auth_secret},
                "headGroupSpec": _head(name, opts, items),
                "workerGroupSpecs": [_worker_group(name, g, opts, items) for g in groups],
            },
        },
    }


def _head(name: str, opts: RenderOptions, items: Items) -> dict[str, Any]:
    memory = f"{opts.head_memory_gib}Gi"
    container = _container("ray-head", opts, {"cpu": str(opts.head_cpus), "memory": memory})
    container["ports"] = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8080, "name": "metrics"},
    ]
    spec = _pod_spec(name, container, opts, max(1, opts.head_memory_gib // 2), items)
    # The head holds the GCS and the driver: a spot reclaim would end the run, so on-demand nodes only.
    spec["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": list(SPOT_LABELS)}]}
        }
    }
    return {
        "serviceType": "ClusterIP",
        # num-cpus 0: no training lands on the head, so a worker's crash never takes the GCS with it.
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {"metadata": {"labels": _labels(name)}, "spec": spec},
    }


def _worker_group(name: str, group: Group, opts: RenderOptions, items: Items) -> dict[str, Any]:
    limits = {"cpu": str(group.cpus), "memory": f"{group.memory_gib}Gi"}
    if group.gpus:
        limits["nvidia.com/gpu"] = str(group.gpus)
    spec = _pod_spec(name, _container("ray-worker", opts, limits), opts, max(1, group.memory_gib // 2), items)
    if group.gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    else:  # the image's CUDA torch finds no GPU here: DeepSpeed runs on its CPU accelerator with gloo
        spec["containers"][0]["env"].append({"name": "DS_ACCELERATOR", "value": "cpu"})
    params: dict[str, str] = {}
    if group.resources:
        # KubeRay passes this string to `ray start --resources`; the extra quotes survive its shell.
        custom = ", ".join(f'\\"{k}\\": {v}' for k, v in group.resources.items())
        params["resources"] = f'"{{{custom}}}"'
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        "rayStartParams": params,
        "template": {"metadata": {"labels": _labels(name)}, "spec": spec},
    }


def _container(role: str, opts: RenderOptions, resources: dict[str, str]) -> dict[str, Any]:
    return {
        "name": role,
        "image": opts.image,
        "resources": {"limits": resources, "requests": dict(resources)},
        "env": [
            {"name": "HF_HOME", "value": f"{opts.runs_mount}/.cache/huggingface"},
            {"name": "TORCH_EXTENSIONS_DIR", "value": f"{opts.runs_mount}/.cache/torch_extensions"},
            # Optional: with no Secret, W&B runs offline into the run dir.
            _secret_env("WANDB_API_KEY", opts.wandb_secret, "api_key", optional=True),
        ],
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "runs", "mountPath": opts.runs_mount},
            {"name": "job", "mountPath": JOB_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *WRITABLE_MOUNTS,
        ],
    }


def _pod_spec(name: str, container: dict[str, Any], opts: RenderOptions, shm_gib: int, items: Items) -> dict[str, Any]:
    return {
        "automountServiceAccountToken": False,  # Ray pods never call the Kubernetes API here
        "terminationGracePeriodSeconds": opts.grace_seconds,
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": [
            {"name": "runs", "persistentVolumeClaim": {"claimName": opts.runs_claim}},
            {"name": "job", "configMap": {"name": f"{name}-config", "items": items}},
            # NCCL's shared-memory transport and Ray's object store live in /dev/shm; the runtime's 64 MiB
            # default is far too small. A memory-backed emptyDir counts against the memory limit.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib}Gi"}},
            *WRITABLE_VOLUMES,
        ],
    }


def _submitter(name: str, opts: RenderOptions) -> dict[str, Any]:
    """KubeRay's submitter pod runs `ray job submit` against the head; it gets the same hardening, and the
    token explicitly, since the Jobs API refuses a submission without it."""
    container = {
        "name": "ray-job-submitter",
        "image": opts.image,
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "200m", "memory": "512Mi"}},
        "env": [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            _secret_env("RAY_AUTH_TOKEN", opts.auth_secret, "auth_token", optional=False),
        ],
        "securityContext": _container_security(),
        "volumeMounts": list(WRITABLE_MOUNTS),
    }
    spec = {
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": list(WRITABLE_VOLUMES),
    }
    return {"metadata": {"labels": _labels(name)}, "spec": spec}


def _secret_env(var: str, secret: str, key: str, optional: bool) -> dict[str, Any]:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,  # the run volume is writable by the image's user
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    # Ray needs no Linux capability; py-spy profiling from the dashboard (SYS_PTRACE) is given up.
    # The image is read-only: Ray's session goes to /tmp and caches to the home folder, both emptyDirs.
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


EGRESS_BLOCKS = ({"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}, {"cidr": "::/0", "except": ["fd00:ec2::254/128"]})
WRITABLE_MOUNTS = ({"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/hone"})
WRITABLE_VOLUMES = ({"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}})
