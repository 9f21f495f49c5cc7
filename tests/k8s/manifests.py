"""Offline checks of Kubernetes manifests: what an API server with the KubeRay CRDs would accept, the
operator's own rules that no schema holds, and hone's security properties. Each check returns a list of
problems (empty: fine) so a test can assert both that good manifests pass and that broken ones fail."""

from __future__ import annotations

import copy
import functools
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).parents[2]
K8S = REPO / "k8s"
CRD_DIR = REPO / ".." / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
K8S_VERSION = "1.30"  # the oldest Kubernetes these manifests target; kubernetes-validate bundles its schemas
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL", re.IGNORECASE)
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(overlay: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing"
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return load_docs(out.stdout)


def static_docs() -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes object in a file under k8s/ (kustomization files are kustomize's, not objects)."""
    out = {}
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            out[str(path.relative_to(REPO))] = load_docs(path.read_text())
    return out


# ----------------------------------------------------------------------------------------------------
# Schemas


def schema_problems(doc: dict[str, Any]) -> list[str]:
    kind = doc.get("kind", "?")
    if kind in CRD_FILES:
        return crd_problems(doc)
    import kubernetes_validate

    try:
        # strict: unknown fields are errors (kubectl's server-side field validation rejects them too)
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{kind} {_name(doc)}: {err.message} at {'/'.join(map(str, err.path))}"]
    return []


def crd_problems(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = crd_schema(doc["kind"], doc["apiVersion"].split("/")[-1])
    # The API server fills a field's default before it validates, so a required field with a default may
    # be left out: apply the CRD's defaults first, as the server would, then validate.
    doc = apply_defaults(schema, copy.deepcopy(doc))
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{doc['kind']} {_name(doc)}: {e.message} at {'/'.join(map(str, e.absolute_path))}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


@functools.cache
def crd_schema(kind: str, version: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB: libyaml parses them in a second
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strict(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{kind} has no version {version} in {CRD_FILES[kind]}")


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Structural CRD schemas drop unknown fields silently (pruning), which hides a typo'd field until the
    cluster ignores it. Make objects closed, as `kubectl apply --validate=strict` does, except where the
    schema keeps unknown fields on purpose."""
    schema = dict(schema)
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(s) for s in schema[key]]
    return schema


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------
# The operator's rules (KubeRay's webhook/controller checks, not in the CRD schema)


def operator_problems(doc: dict[str, Any]) -> list[str]:
    kind, name = doc.get("kind"), _name(doc)
    problems = []
    if kind in CRD_FILES and not DNS_LABEL.fullmatch(name):
        problems.append(f"{kind} {name}: the name must be a DNS-1123 label")
    if kind == "RayJob":
        spec = doc["spec"]
        if len(name) > 47:
            problems.append(f"RayJob {name}: {len(name)} chars; KubeRay allows at most 47")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
            problems.append(f"RayJob {name}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
        if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
            problems.append(f"RayJob {name}: give exactly one of rayClusterSpec and clusterSelector")
        if "rayClusterSpec" in spec:
            problems += _cluster_rules(f"RayJob {name}", spec["rayClusterSpec"])
    if kind == "RayCluster":
        problems += _cluster_rules(f"RayCluster {name}", doc["spec"])
    return problems


def _cluster_rules(where: str, spec: dict[str, Any]) -> list[str]:
    problems = []
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        problems.append(f"{where}: worker group names repeat: {names}")
    for group in spec.get("workerGroupSpecs", []):
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        replicas = group.get("replicas", low)
        if not low <= replicas <= high:
            problems.append(
                f"{where} group {group.get('groupName')}: needs minReplicas {low} <= replicas {replicas} <= maxReplicas {high}"
            )
    return problems


# ----------------------------------------------------------------------------------------------------
# Security properties


def security_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for doc in docs:
        where = f"{doc.get('kind')} {_name(doc)}"
        for path, pod in pod_specs(doc):
            problems += _pod_problems(f"{where} {path}", pod)
        for path, env in _env_lists(doc):
            problems += [
                f"{where} {path}: {e['name']} has a literal value" for e in env if "value" in e and SECRET_NAME.search(e["name"])
            ]
        problems += _kind_problems(where, doc)
    return problems + _network_problems(docs)


def pod_specs(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in a document, wherever it sits (a pod spec is the mapping that holds `containers`)."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path or "/", node
        for key, value in node.items():
            yield from pod_specs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pod_specs(value, f"{path}/{i}")


def _pod_problems(where: str, pod: dict[str, Any]) -> list[str]:
    problems = []
    pod_ctx = pod.get("securityContext", {})
    for c in pod["containers"] + pod.get("initContainers", []):
        problems += container_problems(f"{where} container {c.get('name')}", pod_ctx, c.get("securityContext", {}))
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append(f"{where}: shares the host's network/PID/IPC namespace")
    return problems


def container_problems(where: str, pod_ctx: dict[str, Any], ctx: dict[str, Any]) -> list[str]:
    merged = {**pod_ctx, **ctx}  # a container's own setting overrides the pod's
    problems = []
    if merged.get("runAsNonRoot") is not True:
        problems.append(f"{where}: runAsNonRoot is not true")
    if not merged.get("runAsUser"):
        problems.append(f"{where}: no non-zero runAsUser")
    if ctx.get("privileged"):
        problems.append(f"{where}: privileged")
    if ctx.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    if "ALL" not in ctx.get("capabilities", {}).get("drop", []) or ctx.get("capabilities", {}).get("add"):
        problems.append(f"{where}: capabilities are not drop [ALL] with nothing added")
    if ctx.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem is not true")
    return problems


def _env_lists(node: Any, path: str = "") -> Iterator[tuple[str, list[dict[str, Any]]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield f"{path}/env", value
            else:
                yield from _env_lists(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _env_lists(value, f"{path}/{i}")


def _kind_problems(where: str, doc: dict[str, Any]) -> list[str]:
    kind, spec = doc.get("kind"), doc.get("spec", {})
    problems = []
    if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        problems.append(f"{where}: a Secret manifest holds data; create it with kubectl instead")
    if kind == "Service" and spec.get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"{where}: Service type {spec.get('type')}, only ClusterIP is allowed")
    clusters = (
        [spec] if kind == "RayCluster" else [spec["rayClusterSpec"]] if kind == "RayJob" and "rayClusterSpec" in spec else []
    )
    for cluster in clusters:
        head = cluster.get("headGroupSpec", {})
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            problems.append(f"{where}: the head (dashboard) Service must be ClusterIP with no Ingress")
        if head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"{where}: headService type must be ClusterIP")
        if cluster.get("enableInTreeAutoscaling"):
            # KubeRay adds the autoscaler container to the head pod with this securityContext.
            ctx = cluster.get("autoscalerOptions", {}).get("securityContext", {})
            problems += container_problems(f"{where} autoscaler", {}, ctx)
    if kind == "RayJob" and spec.get("submissionMode", "K8sJobMode") == "K8sJobMode" and "submitterPodTemplate" not in spec:
        problems.append(f"{where}: KubeRay's default submitter pod has no securityContext; give a submitterPodTemplate")
    if kind == "RayJob" and not spec.get("activeDeadlineSeconds", 0) > 0:
        problems.append(f"{where}: no activeDeadlineSeconds, so a hung job holds its nodes for good")
    if kind == "RayJob" and SECRET_NAME.search(spec.get("runtimeEnvYAML", "")):
        problems.append(f"{where}: runtimeEnvYAML names a secret-like key; the Jobs API shows it to anyone")
    return problems


def _network_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every Ray pod is selected by a NetworkPolicy whose every ingress rule names its in-cluster sources."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    problems = []
    for policy in policies:
        spec, where = policy["spec"], f"NetworkPolicy {_name(policy)}"
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            problems.append(f"{where}: does not restrict ingress")
        if "Egress" not in spec.get("policyTypes", []) or not _blocks_metadata(spec.get("egress", [])):
            problems.append(f"{where}: egress does not keep the pods from the cloud metadata address 169.254.169.254")
        for rule in spec.get("ingress", []):
            sources = rule.get("from", [])
            if not sources:
                problems.append(f"{where}: a rule with no `from` admits every source, outside the cluster too")
            for source in sources:
                if "ipBlock" in source:
                    problems.append(f"{where}: an ipBlock source can admit traffic from outside the cluster")
                if "namespaceSelector" in source and not source["namespaceSelector"]:
                    problems.append(f"{where}: an empty namespaceSelector admits every namespace")
    for doc in docs:
        if doc.get("kind") not in CRD_FILES:
            continue
        for path, labels in _ray_pod_labels(doc):
            if not any(_selects(p["spec"].get("podSelector", {}), labels) for p in policies):
                problems.append(f"{doc['kind']} {_name(doc)} {path}: no NetworkPolicy selects this Ray pod")
    return problems


def _blocks_metadata(rules: list[dict[str, Any]]) -> bool:
    """Every egress rule lists only ipBlocks, and every IPv4 block that spans 169.254.169.254 excepts it."""
    if not rules:
        return False
    for rule in rules:
        targets = rule.get("to")
        if not targets or any("ipBlock" not in t for t in targets):
            return False  # a rule with no `to`, or a pod/namespace selector, says nothing about the address
        for target in targets:
            block = target["ipBlock"]
            if ":" not in block["cidr"] and ipaddress.ip_address("169.254.169.254") in ipaddress.ip_network(block["cidr"]):
                if "169.254.169.254/32" not in block.get("except", []):
                    return False
    return True


def _ray_pod_labels(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] == "RayJob" else doc["spec"]
    if doc["kind"] == "RayJob" and "rayClusterSpec" not in doc["spec"]:
        return
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        yield name, group["template"].get("metadata", {}).get("labels", {})


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if selector.get("matchExpressions"):
        return False  # not used here; a policy relying on them is not understood, so not counted
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _name(doc: dict[str, Any]) -> str:
    return str(doc.get("metadata", {}).get("name", "?"))
