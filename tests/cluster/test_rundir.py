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


def test_a_run_saved_before_a_setting_existed_is_the_same_run_while_that_setting_is_at_its_default():
    """Upgrading hone adds settings; a run dir written before them must resume or be reported finished,
    not refused as a different run, unless the new setting is actually changed."""
    from hone.training.config import load_config, to_dict

    new = to_dict(load_config(None, ["model.source=/m", "data.train=[x]"]))
    old = json.loads(json.dumps(new))
    del old["train"]["gradient_checkpointing"], old["model"]["attn_implementation"]
    assert config_differences(old, new) == []
    changed = to_dict(load_config(None, ["model.source=/m", "data.train=[x]", "train.gradient_checkpointing=true"]))
    assert config_differences(old, changed) == ["train.gradient_checkpointing"]
