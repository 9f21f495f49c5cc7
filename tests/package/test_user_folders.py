"""hone runs from a project folder whose own `training`, `rl` and `cluster` packages would have shadowed it,
and leaves nothing of its Ray session behind."""

import os
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import sft_overrides

pytestmark = pytest.mark.slow


def test_hone_run_from_a_folder_with_its_own_training_rl_and_cluster_packages(assets, tmp_path):
    project = tmp_path / "project"
    for name in ("training", "rl", "cluster"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"raise ImportError('the user project imported its own {name}')\n")
    (project / "run.yaml").write_text("{}\n")
    out = tmp_path / "run"
    overrides = sft_overrides(assets, out, "train.max_steps=2", "eval.max_samples=2")
    # `python -m` puts the working directory first on the driver's import path, and Ray puts the driver's
    # working directory on every worker's: both would find the project's packages first.
    ray_tmp = tempfile.mkdtemp(dir="/tmp")  # short: Ray's socket paths under it must fit 107 bytes
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HONE_RAY_TMP": ray_tmp}
    done = subprocess.run(
        [sys.executable, "-m", "hone.cluster.cli", "run", "run.yaml", *overrides],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "summary.json").is_file() and (out / "model" / "config.json").is_file()
    assert os.listdir(ray_tmp) == [], "the finished run left its Ray session in HONE_RAY_TMP"
    os.rmdir(ray_tmp)
