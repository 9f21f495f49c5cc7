"""Every manifest in k8s/, every kustomize overlay and every `hone k8s render` of the example configs
validates offline (Kubernetes core schemas, KubeRay v1.7 CRDs, the operator's own rules) and keeps hone's
security properties; and each check catches the breakage it exists for."""

from __future__ import annotations

import copy
import shutil
from typing import Any

import pytest
import yaml

from hone.cluster.k8s import RenderOptions, render
from tests.k8s.manifests import (
    CRD_DIR,
    K8S,
    REPO,
    kustomize,
    load_docs,
    operator_problems,
    pod_specs,
    schema_problems,
    security_problems,
    static_docs,
)

OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
# The example configs, as `hone k8s render` gets them (the last one with GPUs).
RENDERS = {
    "sft": ["examples/quickstart/sft.yaml"],
    "rl": ["examples/rl/arithmetic.yaml"],
    "tune": ["examples/tune/sft_lr.yaml"],
    "sft-gpu": ["examples/quickstart/sft.yaml", "scaling.use_gpu=true", "scaling.num_workers=4"],
}
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed; overlays not built")
needs_crds = pytest.mark.skipif(
    not CRD_DIR.is_dir(), reason=f"the KubeRay CRDs are not at {CRD_DIR}; RayCluster/RayJob schemas not checked"
)


def rendered(key: str) -> list[dict[str, Any]]:
    config, *overrides = RENDERS[key]
    return load_docs(render(REPO / config, overrides, RenderOptions(image="REGISTRY/hone:0.1.0")))


def all_doc_sets() -> dict[str, list[dict[str, Any]]]:
    """Each set is what one `kubectl apply` would send: a file, an overlay's build, a render."""
    sets = dict(static_docs())
    if shutil.which("kubectl"):
        sets |= {f"overlay {name}": kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    return sets | {f"render {key}": rendered(key) for key in RENDERS}


@pytest.fixture(scope="module")
def doc_sets() -> dict[str, list[dict[str, Any]]]:
    return all_doc_sets()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_with_kubectl_kustomize(overlay: str) -> None:
    docs = kustomize(K8S / "overlays" / overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["NetworkPolicy", "PersistentVolumeClaim", "RayCluster", "ServiceAccount"]
    assert {d["metadata"]["namespace"] for d in docs} == {"hone" if overlay == "gpu-prod" else "hone-dev"}
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    containers = [c for _, pod in pod_specs(cluster) for c in pod["containers"]]
    assert all("REGISTRY" in c["image"] or c["image"] == "hone:dev" for c in containers)
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert ("nvidia.com/gpu" in worker["resources"]["limits"]) == (overlay == "gpu-prod")


def test_every_core_object_validates_against_the_kubernetes_schemas(doc_sets: dict[str, list[dict[str, Any]]]) -> None:
    problems = [
        f"{where}: {p}"
        for where, docs in doc_sets.items()
        for d in docs
        if d["kind"] not in ("RayCluster", "RayJob")
        for p in schema_problems(d)
    ]
    assert problems == []


@needs_crds
def test_every_raycluster_and_rayjob_validates_against_the_kuberay_crds(doc_sets: dict[str, list[dict[str, Any]]]) -> None:
    ray = [(where, d) for where, docs in doc_sets.items() for d in docs if d["kind"] in ("RayCluster", "RayJob")]
    assert {d["kind"] for _, d in ray} == {"RayCluster", "RayJob"}
    problems = [f"{where}: {p}" for where, d in ray for p in schema_problems(d)]
    assert problems == []


def test_operator_rules_hold_for_every_document(doc_sets: dict[str, list[dict[str, Any]]]) -> None:
    problems = [f"{where}: {p}" for where, docs in doc_sets.items() for d in docs for p in operator_problems(d)]
    assert problems == []
    jobs = [d for docs in doc_sets.values() for d in docs if d["kind"] == "RayJob"]
    assert len(jobs) >= 7  # three examples and four renders
    assert all(j["spec"]["shutdownAfterJobFinishes"] and j["spec"]["ttlSecondsAfterFinished"] > 0 for j in jobs)


def test_security_properties_hold_for_every_set(doc_sets: dict[str, list[dict[str, Any]]]) -> None:
    # A set is checked on its own: each must carry its own NetworkPolicy, except single base files,
    # which are checked together as the base's resources.
    base = [d for where, docs in doc_sets.items() if where.startswith("k8s/base/") for d in docs]
    sets = {where: docs for where, docs in doc_sets.items() if not where.startswith("k8s/base/")} | {"k8s/base": base}
    problems = [f"{where}: {p}" for where, docs in sets.items() for p in security_problems(docs)]
    assert problems == []
    pods = [pod for docs in sets.values() for d in docs for _, pod in pod_specs(d)]
    assert len(pods) > 20


def test_secrets_come_only_from_secret_refs(doc_sets: dict[str, list[dict[str, Any]]]) -> None:
    env = [
        e
        for docs in doc_sets.values()
        for d in docs
        for _, pod in pod_specs(d)
        for c in pod["containers"]
        for e in c.get("env", [])
    ]
    secret = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert secret == {"WANDB_API_KEY": "hone-wandb", "RAY_AUTH_TOKEN": "hone-ray-auth"}
    assert not [d for docs in doc_sets.values() for d in docs if d["kind"] == "Secret"]
    clusters = [
        d["spec"].get("rayClusterSpec", d["spec"])
        for docs in doc_sets.values()
        for d in docs
        if d["kind"] in ("RayCluster", "RayJob")
    ]
    assert all(c["authOptions"] == {"mode": "token", "secretName": "hone-ray-auth"} for c in clusters)


def test_gpu_workers_get_shared_memory_grace_and_the_head_avoids_spot(doc_sets: dict[str, list[dict[str, Any]]]) -> None:
    for where, docs in doc_sets.items():
        for doc in docs:
            if doc["kind"] not in ("RayCluster", "RayJob"):
                continue
            cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
            head = cluster["headGroupSpec"]["template"]["spec"]
            assert head["affinity"]["nodeAffinity"], where
            for group in cluster["workerGroupSpecs"]:
                spec = group["template"]["spec"]
                shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
                assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"], where
                assert spec["terminationGracePeriodSeconds"] >= 120, where
                mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
                assert {"/dev/shm", "/mnt/runs"} <= mounts, where


# ----------------------------------------------------------------------------------------------------
# The checks catch what they are for: break a good document, see the check fail


def _job() -> list[dict[str, Any]]:
    return rendered("sft-gpu")


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def _worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _kind(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


SECURITY_BREAKS = {
    "privileged": lambda d: _worker_container(d)["securityContext"].update(privileged=True),
    "escalation": lambda d: _worker_container(d)["securityContext"].pop("allowPrivilegeEscalation"),
    "root": lambda d: _kind(d, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"].update(
        runAsNonRoot=False
    ),
    "capabilities": lambda d: _worker_container(d)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "literal key": lambda d: _worker_container(d)["env"].append({"name": "WANDB_API_KEY", "value": "abc123"}),
    "literal token": lambda d: _worker_container(d)["env"].append({"name": "HF_TOKEN", "value": "hf_x"}),
    "secret manifest": lambda d: d.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "w"}, "stringData": {"api_key": "x"}}
    ),
    "load balancer": lambda d: _kind(d, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"].update(serviceType="LoadBalancer"),
    "node port service": lambda d: d.append(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"type": "NodePort"}}
    ),
    "no network policy": lambda d: d.remove(_kind(d, "NetworkPolicy")),
    "open rule": lambda d: _kind(d, "NetworkPolicy")["spec"]["ingress"].append({"ports": [{"port": 8265}]}),
    "ip block": lambda d: _kind(d, "NetworkPolicy")["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
    "default submitter": lambda d: _kind(d, "RayJob")["spec"].pop("submitterPodTemplate"),
    "secret in runtime env": lambda d: _kind(d, "RayJob")["spec"].update(runtimeEnvYAML="env_vars: {WANDB_API_KEY: abc}"),
    "writable root": lambda d: _worker_container(d)["securityContext"].pop("readOnlyRootFilesystem"),
    "no egress rules": lambda d: _kind(d, "NetworkPolicy")["spec"].update(policyTypes=["Ingress"]),
    "metadata reachable": lambda d: _kind(d, "NetworkPolicy")["spec"]["egress"][0]["to"][0]["ipBlock"].pop("except"),
    "egress to anything": lambda d: _kind(d, "NetworkPolicy")["spec"]["egress"].append({}),
    "no deadline": lambda d: _kind(d, "RayJob")["spec"].pop("activeDeadlineSeconds"),
}


@pytest.mark.parametrize("name", SECURITY_BREAKS)
def test_security_checker_catches(name: str) -> None:
    docs = _job()
    assert security_problems(docs) == []
    SECURITY_BREAKS[name](docs)
    assert security_problems(docs), f"{name} went unnoticed"


OPERATOR_BREAKS = {
    "name over 47": lambda j: j["metadata"].update(name="x" * 48),
    "ttl without shutdown": lambda j: j["spec"].update(shutdownAfterJobFinishes=False),
    "replicas above max": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=9, maxReplicas=2),
    "min above replicas": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=3, replicas=1),
}


@pytest.mark.parametrize("name", OPERATOR_BREAKS)
def test_operator_rules_catch(name: str) -> None:
    job = _kind(_job(), "RayJob")
    assert operator_problems(job) == []
    OPERATOR_BREAKS[name](job)
    assert operator_problems(job), f"{name} went unnoticed"


SCHEMA_BREAKS = {
    "typo in a RayJob field": ("RayJob", lambda j: j["spec"].update(shutdownAfterJobsFinish=True)),
    "string replicas": ("RayJob", lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="2")),
    "head without template": ("RayJob", lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template")),
    "bad auth mode": ("RayJob", lambda j: j["spec"]["rayClusterSpec"].update(authOptions={"mode": "password"})),
    "typo in a pod field": ("NetworkPolicy", lambda p: p["spec"].update(podSelecter={})),
    "port as a list": ("NetworkPolicy", lambda p: p["spec"]["ingress"][1]["ports"][0].update(port=[1])),
}


@pytest.mark.parametrize("name", SCHEMA_BREAKS)
def test_schema_validation_catches(name: str) -> None:
    kind, mutate = SCHEMA_BREAKS[name]
    if kind == "RayJob" and not CRD_DIR.is_dir():
        pytest.skip(f"the KubeRay CRDs are not at {CRD_DIR}")
    doc = copy.deepcopy(_kind(_job(), kind))
    assert schema_problems(doc) == []
    mutate(doc)
    assert schema_problems(doc), f"{name} went unnoticed"


@needs_crds
def test_defaulted_required_fields_may_be_left_out() -> None:
    """minReplicas/maxReplicas are required in the CRD but have defaults, which the API server fills first."""
    job = _kind(_job(), "RayJob")
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    del group["minReplicas"], group["maxReplicas"]
    assert schema_problems(job) == []
    del group["groupName"]  # required, no default
    assert any("groupName" in p for p in schema_problems(job))


def test_examples_are_what_k8s_readme_says() -> None:
    def example(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        docs = load_docs((K8S / "examples" / name).read_text())
        config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])
        job = next(d for d in docs if d["kind"] == "RayJob")["spec"]
        return config, {g["groupName"]: g for g in job["rayClusterSpec"]["workerGroupSpecs"]} | {"entrypoint": job["entrypoint"]}

    config, groups = example("sft-zero3.yaml")
    gpus = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert config["deepspeed"]["zero_stage"] == 3 and config["scaling"]["num_workers"] == 16
    assert (groups["gpu"]["replicas"], gpus) == (2, "8")
    config, groups = example("rl-rollout-policy.yaml")
    # The worker groups advertise exactly the custom resources the config's roles ask for.
    assert set(config["rl"]["rollout"]["resources"]) == {"rollout"} and set(config["rl"]["policy_resources"]) == {"policy"}
    assert groups["rollout"]["rayStartParams"]["resources"] == '"{\\"rollout\\": 1}"'
    assert groups["policy"]["rayStartParams"]["resources"] == '"{\\"policy\\": 1}"'
    config, groups = example("tune-sft-lr.yaml")
    assert groups["entrypoint"].startswith("hone tune ") and config["tune"]["max_concurrent_trials"] == 4


def test_example_rayjobs_are_what_render_makes_today() -> None:
    """k8s/examples/*.yaml are `hone k8s render` outputs; each starts with the command that made it."""
    import argparse
    import shlex

    from hone.cluster.k8s import FLAGS, _header, add_k8s_parser

    parser = argparse.ArgumentParser(prog="hone")
    add_k8s_parser(parser.add_subparsers(dest="command"))

    examples = sorted((K8S / "examples").glob("*.yaml"))
    assert [p.name for p in examples] == ["rl-rollout-policy.yaml", "sft-zero3.yaml", "tune-sft-lr.yaml"]
    for path in examples:
        text = path.read_text()
        words = shlex.split(text.splitlines()[0].removeprefix("# Made by: "))
        args = parser.parse_args(words[1:])
        opts = RenderOptions(**{attr: getattr(args, f"k8s_{attr}") for attr, _ in FLAGS.values()})
        fresh = render(REPO / args.config, args.overrides, opts, header=_header(args, opts))
        assert fresh == text, f"{path} is stale: run the command on its first line with --output {path}"


def test_dockerfile_user_and_copies_match_the_manifests() -> None:
    """The image cannot be built here (no docker): check what ties it to the manifests and the repo."""
    import re

    from hone.cluster.k8s_manifests import UID

    text = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^ARG UID={UID}$", text, re.M) and re.search(r"^USER \$\{UID\}:\$\{UID\}$", text, re.M)
    base = yaml.safe_load((K8S / "base" / "raycluster.yaml").read_text())
    assert {ctx["runAsUser"] for _, pod in pod_specs(base) for ctx in [pod["securityContext"]]} == {UID}
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"the Dockerfile copies {path}, which the repo does not have"
    assert "pip install --no-cache-dir ." in text and "wget" in text  # KubeRay's probes call wget
    assert re.search(r"^ARG VLLM=vllm$", text, re.M)  # the official vLLM, for rollout on GPUs
    assert text.index('pip install --no-cache-dir "${VLLM}"') < text.index("pip install --no-cache-dir .")
    folders = re.findall(r'^"hone\.\w+" = "(\w+)"$', (REPO / "pyproject.toml").read_text(), re.M)  # package-dir
    assert len(folders) >= 4
    copied = {path for source in re.findall(r"^COPY (.+) \S+$", text, re.M) for path in source.split()}
    assert set(folders) <= copied, f"the image lacks a package folder: {set(folders) - copied}"
