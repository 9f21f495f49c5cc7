"""Two Ray nodes on one machine, one worker on each (STRICT_SPREAD), ZeRO-3 sharding the parameters."""

import pytest
from transformers import AutoModelForCausalLM

from hone.cluster.connect import own_state_api
from hone.cluster.run import run
from hone.training.config import load_config
from tests.conftest import sft_overrides

pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    with own_state_api() as port:  # its state API, not another cluster's on this machine
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": port})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
        ray.shutdown()
        cluster.shutdown()


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
