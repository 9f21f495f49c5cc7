"""`hone k8s render`: worker groups sized from the config, the config shipped with the job, and bad input
refused with a message naming the field and the fix, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hone.cluster.cli import main
from hone.cluster.k8s import JOB_DIR, RenderOptions, render
from hone.training.config import from_dict
from tests.k8s.manifests import REPO, load_docs

SFT = str(REPO / "examples/quickstart/sft.yaml")
RL = str(REPO / "examples/rl/arithmetic.yaml")
TUNE = str(REPO / "examples/tune/sft_lr.yaml")


def docs_of(config: str, *overrides: str, **options: Any) -> dict[str, dict[str, Any]]:
    docs = load_docs(render(config, list(overrides), RenderOptions(**options)))
    return {d["kind"]: d for d in docs}


def groups(docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """groupName -> {replicas, cpu, gpu, memory, params} of the RayJob's worker groups."""
    out = {}
    for g in docs["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert g["replicas"] == g["minReplicas"] == g["maxReplicas"]
        out[g["groupName"]] = {
            "replicas": g["replicas"],
            "cpu": int(limits["cpu"]),
            "gpu": int(limits.get("nvidia.com/gpu", 0)),
            "memory": limits["memory"],
            "params": g["rayStartParams"],
        }
    return out


def shipped(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])


def test_cpu_config_gets_one_cpu_pod_and_its_data_in_the_configmap() -> None:
    docs = docs_of(SFT)
    assert groups(docs) == {"cpu": {"replicas": 1, "cpu": 2, "gpu": 0, "memory": "8Gi", "params": {}}}
    job = docs["RayJob"]
    assert job["metadata"]["name"] == "hone-sft-quickstart"
    assert job["spec"]["entrypoint"] == f"hone run {JOB_DIR}/config.yaml --address auto"
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": "DS_ACCELERATOR", "value": "cpu"} in worker["containers"][0]["env"] and "tolerations" not in worker
    config = shipped(docs)
    assert config["output_dir"] == "/mnt/runs/quickstart"
    (path,) = config["data"]["train"]
    key = next(
        i["key"]
        for i in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][1]["configMap"]["items"]
        if f"{JOB_DIR}/{i['path']}" == path
    )
    assert docs["ConfigMap"]["data"][key] == (REPO / "examples/quickstart/ledger_dates.jsonl").read_text()
    # The shipped file is a config hone loads as it is, with the same settings.
    cfg = from_dict(config)
    assert (cfg.lora.rank, cfg.train.max_steps, cfg.scaling.cpus_per_worker) == (16, 16, 2.0)


@pytest.mark.parametrize(
    ("overrides", "options", "expected"),
    [
        (["scaling.num_workers=4"], {}, {"replicas": 1, "gpu": 4, "cpu": 8}),
        (["scaling.num_workers=4"], {"gpus_per_node": 2}, {"replicas": 2, "gpu": 2, "cpu": 4}),
        (["scaling.num_workers=16"], {}, {"replicas": 2, "gpu": 8, "cpu": 16}),
        (["scaling.num_workers=4", "scaling.gpus_per_worker=0.5"], {}, {"replicas": 1, "gpu": 2, "cpu": 8}),
        (["scaling.num_workers=3", "scaling.placement_strategy=STRICT_SPREAD"], {}, {"replicas": 3, "gpu": 1, "cpu": 2}),
    ],
)
def test_gpu_workers_pack_into_nodes(overrides: list[str], options: dict[str, Any], expected: dict[str, int]) -> None:
    (group,) = groups(docs_of(SFT, "scaling.use_gpu=true", *overrides, **options)).values()
    assert {k: group[k] for k in expected} == expected
    assert group["memory"] == f"{group['gpu'] * 64}Gi"


def test_rl_roles_with_custom_resources_get_their_own_worker_groups() -> None:
    docs = docs_of(
        RL,
        "scaling.use_gpu=true",
        "scaling.num_workers=4",
        "rl.rollout={num_workers: 2, cpus: 4, gpus: 1, resources: {rollout: 0.01}}",
        "rl.policy_resources={policy: 0.01}",
        "rl.kl_coef=0.1",  # a reference role too, with no custom resources
        "rl.reference={num_workers: 1, cpus: 2, gpus: 1}",
    )
    found = groups(docs)
    assert found["policy"] == {
        "replicas": 1,
        "cpu": 4,
        "gpu": 4,
        "memory": "256Gi",
        "params": {"resources": '"{\\"policy\\": 1}"'},
    }
    assert found["rollout"]["gpu"] == 2 and found["rollout"]["params"] == {"resources": '"{\\"rollout\\": 1}"'}
    assert found["gpu"] == {"replicas": 1, "cpu": 2, "gpu": 1, "memory": "64Gi", "params": {}}
    # What `ray start --resources` gets once KubeRay's shell has taken the outer quotes: valid JSON.
    assert json.loads(found["rollout"]["params"]["resources"].strip('"').replace('\\"', '"')) == {"rollout": 1}
    reward = shipped(docs)["rl"]["rewards"][1]
    assert reward["path"] == f"{JOB_DIR}/reward-1"
    assert docs["ConfigMap"]["data"]["reward-1_rewards.py"] == (REPO / "examples/rl/rewards.py").read_text()


def test_tune_config_runs_hone_tune_with_room_for_concurrent_trials() -> None:
    docs = docs_of(TUNE, "scaling.use_gpu=true", "tune.max_concurrent_trials=3")
    assert docs["RayJob"]["spec"]["entrypoint"].startswith("hone tune ")
    assert groups(docs)["gpu"]["gpu"] == 3
    assert docs_of(TUNE, command="run")["RayJob"]["spec"]["entrypoint"].startswith("hone run ")


def test_pipeline_ships_every_stage_inline(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    pipeline = tmp_path / "pipe.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "output_dir": "runs/chain",
                "defaults": {"model": {"source": "HuggingFaceTB/SmolLM2-135M-Instruct"}},
                "eval": {"data": "qa.jsonl", "max_new_tokens": 8},
                "stages": [
                    {"name": "sft", "mode": "sft", "data": {"train": ["qa.jsonl"]}},
                    {
                        "name": "more",
                        "mode": "sft",
                        "model": {"source": "previous"},
                        "data": {"train": ["qa.jsonl"]},
                        "scaling": {"num_workers": 2},
                    },
                ],
            }
        )
    )
    docs = docs_of(str(pipeline))
    config = shipped(docs)
    assert config["output_dir"] == "/mnt/runs/chain"
    assert [s["output_dir"] for s in config["stages"]] == ["/mnt/runs/chain/1-sft", "/mnt/runs/chain/2-more"]
    assert config["stages"][1]["model"]["source"] == "previous"
    assert config["eval"]["data"].startswith(f"{JOB_DIR}/") and config["eval"]["max_new_tokens"] == 8  # its questions too
    items = docs["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][1]["configMap"]["items"]
    assert config["eval"]["data"] in [f"{JOB_DIR}/{item['path']}" for item in items]
    assert groups(docs)["cpu"]["cpu"] == 2  # sized for the larger stage (two 1-CPU workers in one pod)


def test_long_names_are_cut_to_47_dns_chars() -> None:
    docs = docs_of(SFT, "output_dir=Runs/A_Very_Long_Run_Directory_Name_That_Goes_On_And_On")
    name = docs["RayJob"]["metadata"]["name"]
    assert len(name) <= 47 and name.startswith("hone-sft-a-very-long-run") and not name.endswith("-")


# ----------------------------------------------------------------------------------------------------
# Bad input: `hone: error: ...`, exit 1, and no output file


ERRORS = {
    "gpus per worker over node": (
        [SFT, "scaling.use_gpu=true", "scaling.gpus_per_worker=4", "--gpus-per-node", "2"],
        ["scaling.gpus_per_worker=4", "--gpus-per-node 2", "raise --gpus-per-node"],
    ),
    "more gpus than nodes": (
        [SFT, "scaling.use_gpu=true", "scaling.num_workers=40", "--max-gpu-nodes", "4"],
        ["scaling.num_workers=40", "40 GPUs", "--max-gpu-nodes 4 places at most 32", "lower scaling.num_workers"],
    ),
    "tune trials over nodes": (
        [TUNE, "scaling.use_gpu=true", "tune.max_concurrent_trials=4", "--max-gpu-nodes", "1", "--gpus-per-node", "2"],
        ["tune.max_concurrent_trials 4", "raise --max-gpu-nodes"],
    ),
    "gpu with no gpus": (
        [SFT, "scaling.use_gpu=true", "scaling.gpus_per_worker=0"],
        ["scaling.gpus_per_worker=0", "scaling.use_gpu=true", "set scaling.gpus_per_worker"],
    ),
    "cpus over node": ([SFT, "scaling.cpus_per_worker=64"], ["scaling.cpus_per_worker=64", "--cpus-per-node"]),
    "missing data": ([SFT, "data.train=[/nowhere/x.jsonl]"], ["data.train[0]=/nowhere/x.jsonl", "does not exist", "kubectl cp"]),
    "local model": ([SFT, "model.source={tmp}"], ["model.source=", "is a local model", "/mnt/runs/models/"]),
    "bad name": ([SFT, "--name", "Hone_Job"], ["--name='Hone_Job'", "at most 47"]),
    "unknown key": ([SFT, "scaling.num_worker=2"], ["scaling.num_worker", "did you mean scaling.num_workers"]),
    "bad tune metric": ([TUNE, "tune.metric=accuracy"], ["tune.metric='accuracy'"]),
    "local checkpoint storage": (
        [SFT, "scaling.storage_path=/home/me/ckpt"],
        ["scaling.storage_path=/home/me/ckpt", "not on the run volume", "set it under /mnt/runs"],
    ),
    "reward module missing": (
        [RL, "rl.rewards=[{type: function, function: 'nomodule:score'}]"],
        ["rl.rewards[0].function='nomodule:score'", "put it next to the config"],
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_bad_input_fails_fast_and_writes_nothing(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = ERRORS[case]
    out = tmp_path / "job.yaml"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["k8s", "render", *argv, "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hone: error: ")
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not out.exists()


def test_oversize_local_data_points_to_the_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.jsonl"
    big.write_text('{"prompt": "p", "completion": "c"}\n' * 30_000)  # ~1 MiB
    out = tmp_path / "job.yaml"
    assert main(["k8s", "render", SFT, f"data.train=[{big}]", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "data.train[0]=" in err and "more than a ConfigMap holds" in err and "/mnt/runs/" in err
    assert not out.exists()


def test_render_writes_the_file_and_says_how_to_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "job.yaml"
    assert main(["k8s", "render", SFT, "scaling.num_workers=2", "--image", "r/hone:1", "-o", str(out)]) == 0
    assert f"kubectl apply -f {out}" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith(f"# Made by: hone k8s render {SFT} scaling.num_workers=2 --image r/hone:1\n")
    assert [d["kind"] for d in load_docs(text)] == ["ConfigMap", "NetworkPolicy", "RayJob"]
