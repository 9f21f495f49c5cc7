"""Two Ray nodes on one machine, one worker on each (STRICT_SPREAD), ZeRO-3 sharding the parameters; a
run whose node is lost for good ends with an error in bounded time instead of waiting forever."""

import os
import threading
import time

import pytest
from transformers import AutoModelForCausalLM

from hone.cluster.connect import own_state_api
from hone.cluster.run import run
from hone.cluster.train_run import WorkersLostError
from hone.training.config import load_config
from tests.conftest import sft_overrides

pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    # Ray Train waits this long for a worker group's placement before it counts a failure (60 s by default)
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(START_TIMEOUT_S)
    with own_state_api() as port:  # its state API, not another cluster's on this machine
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": port})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
        ray.shutdown()
        cluster.shutdown()
    del os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]


START_TIMEOUT_S = 15


def test_zero3_across_two_nodes(assets, tmp_path, two_node_cluster):
    out = tmp_path / "zero3"
    overrides = sft_overrides(
        assets,
        out,
        "deepspeed.zero_stage=3",
        "deepspeed.param_persistence_threshold=0",
        "scaling.num_workers=2",
        "scaling.placement_strategy=STRICT_SPREAD",
        "train.micro_batch_per_device=4",
        "train.max_steps=16",
        "eval.max_samples=4",
    )
    summary = run(load_config(None, overrides))

    workers = summary["workers"]
    assert len({w["node_id"] for w in workers}) == 2, workers
    # Every parameter is partitioned: with persistence threshold 0 no rank holds a whole one locally.
    assert all(w["num_params_local_empty"] == w["num_params"] > 0 for w in workers), workers
    assert summary["eval"]["after"]["loss"] < summary["eval"]["before"]["loss"] - 0.3
    gathered = AutoModelForCausalLM.from_pretrained(out / "model")  # weights gathered from both ranks
    base = AutoModelForCausalLM.from_pretrained(assets["llama"])
    assert all(p.shape == base.state_dict()[n].shape for n, p in gathered.state_dict().items())


def test_a_run_whose_node_is_gone_for_good_ends_with_an_error_in_bounded_time(assets, tmp_path, two_node_cluster):
    from hone.training.files import read_jsonl

    out = tmp_path / "lost"
    overrides = sft_overrides(
        assets, out, "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD", "scaling.max_failures=1",
        "train.max_steps=100000", "checkpoint.every_steps=5", "eval.max_samples=4",
    )  # fmt: skip
    [worker_node] = two_node_cluster.list_all_nodes()[1:]
    lost_at: list[float] = []

    def remove_the_second_node_once_training() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(r["step"] >= 6 for r in read_jsonl(out / "metrics.jsonl")):
            time.sleep(0.1)
        two_node_cluster.remove_node(worker_node)  # no autoscaler: it never comes back
        lost_at.append(time.monotonic())

    remover = threading.Thread(target=remove_the_second_node_once_training)
    remover.start()
    with pytest.raises(WorkersLostError, match=r"could not be placed again after a failure \(The worker group startup timed out"):
        run(load_config(None, overrides))
    ended = time.monotonic()
    remover.join()
    assert lost_at, "the run ended before its node was removed"
    # One restart is tried (max_failures=1); each attempt to place the group waits START_TIMEOUT_S, and the
    # controller gives up after max_failures + 1 of those.
    assert ended - lost_at[0] < 6 * START_TIMEOUT_S + 60, ended - lost_at[0]
