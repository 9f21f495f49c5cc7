"""Each role lands where the config asks: rollout on one node, a 2-rank ZeRO-3 policy group on the other,
whose two ranks also hold the KL term's reference partitioned (full fine-tuning under ZeRO-3)."""

import pytest

from hone.cluster.connect import own_state_api
from hone.cluster.run import run
from hone.training.config import load_config
from hone.training.files import read_jsonl
from tests.rl.conftest import rl_overrides

pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster():

    import ray
    from ray.cluster_utils import Cluster

    with own_state_api() as port:  # a free dashboard port (another Ray may hold 8265), and its state API
        # Custom resources are how a role is pinned: the head offers `rollout_node`, the second node `policy_node`.
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "resources": {"rollout_node": 1}, "include_dashboard": True, "dashboard_port": port},
        )
        cluster.add_node(num_cpus=2, resources={"policy_node": 2})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        yield
        ray.shutdown()
        cluster.shutdown()


def test_roles_land_on_the_nodes_the_config_names(assets, prompts, tmp_path, two_node_cluster):
    import ray

    nodes = {next(k for k in n["Resources"] if k.endswith("_node")): n["NodeID"] for n in ray.nodes() if n["Alive"]}
    overrides = rl_overrides(
        assets, prompts, tmp_path / "run", "train.max_steps=4",
        "rl.rollout.resources={rollout_node: 1}", "rl.policy_resources={policy_node: 1}",
        "scaling.num_workers=2", "deepspeed.zero_stage=3", "deepspeed.param_persistence_threshold=0",
        "rl.kl_coef=0.1", "rl.reference.cpus=0",
    )  # fmt: skip
    summary = run(load_config(None, overrides))
    steps = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # full fine-tuning under ZeRO-3: the reference is a frozen copy partitioned over the policy group, no actor
    assert "reference" not in summary["placement"]
    assert all(w["reference_params_partitioned"] == w["reference_params"] > 0 for w in summary["placement"]["policy"])
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["kl"] > 0

    placement = summary["placement"]
    assert [w["node_id"] for w in placement["rollout"]] == [nodes["rollout_node"]]
    assert [w["node_id"] for w in placement["policy"]] == [nodes["policy_node"]] * 2
    assert summary["steps"] == 4
