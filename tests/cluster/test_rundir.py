import json

from hone.cluster.rundir import config_differences, remove_orphan_checkpoints


def test_only_unregistered_checkpoints_are_removed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for name in ("step_0000010", "step_0000020", "step_0000030"):
        (ckpts / name).mkdir(parents=True)
    snapshot = {
        "checkpoint_results": [{"checkpoint_dir_name": "step_0000010"}],
        "latest_checkpoint_result": {"checkpoint_dir_name": "step_0000020"},
    }
    (ckpts / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert remove_orphan_checkpoints(tmp_path) == ["step_0000030"]
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000010", "step_0000020"]


def test_config_differences_ignore_settings_a_resume_may_change():
    old = {"optim": {"lr": 1.0}, "overwrite": False, "scaling": {"placement_timeout_s": 60, "num_workers": 1}}
    new = {"optim": {"lr": 2.0}, "overwrite": True, "scaling": {"placement_timeout_s": 5, "num_workers": 2}}
    assert config_differences(old, new) == ["optim.lr", "scaling.num_workers"]


def test_a_resubmitted_job_is_the_same_run_after_a_cluster_restart():
    def shipped(session: str, package: str) -> dict:
        return {"data": {"train": [f"/tmp/ray/{session}/runtime_resources/working_dir_files/{package}/files/0-train.jsonl"]}}

    assert config_differences(shipped("session_1", "_ray_pkg_ab12"), shipped("session_2", "_ray_pkg_ab12")) == []
    assert config_differences(shipped("session_1", "_ray_pkg_ab12"), shipped("session_1", "_ray_pkg_cd34")) == ["data.train"]
