"""A large text corpus is tokenized by Ray tasks spread over the cluster's nodes (two Ray nodes on this
machine), and the token cache entry they make is the one the driver alone makes: same key, same examples
in the same order, same counts (issue 15)."""

from __future__ import annotations

import pytest

from hone.cluster.connect import own_state_api
from hone.training.config import load_config
from hone.training.prepare import CLUSTER_TASK_DOCS, prepare

pytestmark = pytest.mark.slow

DOCS = CLUSTER_TASK_DOCS * 2 + 37  # the train split (90%): two tasks, the second one short


def _corpus(folder):
    folder.mkdir()
    for i in range(DOCS):
        # many documents longer than max_seq_len (split into pieces)
        words = " ".join(f"word{(i * 7 + j) % 97}" for j in range(1 + i % 40))
        (folder / f"doc{i:05d}.txt").write_text(words)
    return folder


def _cfg(assets, data, cache):
    overrides = [
        "mode=pretrain", f"model.source={assets['llama']}", f"data.train=[{data}]", "data.max_seq_len=24",
        f"data.cache_dir={cache}", f"data.cluster_tokenize_from={CLUSTER_TASK_DOCS}",
    ]  # fmt: skip
    return load_config(None, overrides)


def test_the_cluster_tokenizes_a_large_corpus_into_the_same_cache_entry(assets, tmp_path):
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_tasks

    data = _corpus(tmp_path / "corpus")
    alone = prepare(_cfg(assets, data, tmp_path / "alone"))  # no Ray in this process yet: the driver tokenizes

    with own_state_api() as port:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": port})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        try:
            spread = prepare(_cfg(assets, data, tmp_path / "spread"))
            tasks = list_tasks(
                filters=[("func_or_class_name", "=", "_tokenize_part")], detail=True, raise_on_missing_output=False
            )
        finally:
            ray.shutdown()
            cluster.shutdown()

    # the train split in tasks of CLUSTER_TASK_DOCS documents, on both nodes; the eval split (10%) is too small
    assert len(tasks) == -(-alone.train_stats.num_rows // CLUSTER_TASK_DOCS) == 2
    assert len({t.node_id for t in tasks}) == 2, [(t.name, t.node_id) for t in tasks]
    assert spread.token_cache.rsplit("/", 1)[1] == alone.token_cache.rsplit("/", 1)[1]  # one key: the same examples
    assert spread.summary()["train"] == alone.summary()["train"] and spread.summary()["eval"] == alone.summary()["eval"]
    assert alone.train_stats.num_truncated > 100  # documents split into pieces across the tasks too
    assert list(spread.train_examples) == list(alone.train_examples)
    assert list(spread.eval_examples) == list(alone.eval_examples)
