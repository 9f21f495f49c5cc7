"""`hone config` lists every config key with its type, default and help, and writes a JSON Schema that
accepts the repository's own configs and rejects an unknown key or a wrong type, as `hone validate` does."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from hone.cluster.cli import main
from hone.training.config import config_fields

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIGS = [
    "examples/quickstart/sft.yaml",
    "examples/tune/sft_lr.yaml",
    *(str(p.relative_to(ROOT)) for p in (ROOT / "examples" / "rl").glob("*.yaml")),
]


def test_config_lists_every_key_with_help_and_writes_a_schema(tmp_path, capsys):
    schema_file = tmp_path / "hone.schema.json"
    assert main(["config", "--json-schema", str(schema_file)]) == 0
    out = capsys.readouterr().out
    listed = {line.split(":")[0] for line in out.splitlines() if line and not line.startswith((" ", "hone:"))}
    assert listed == set(config_fields())
    assert "optim.lr: float = 2e-05\n    " in out  # type and default, then the help line
    assert all(f"{key}:" in out for key in ("data.columns", "deepspeed.zero_stage", "rl.kl_coef"))
    helps = [line for line in out.splitlines() if line.startswith("    ")]
    assert len(helps) == len(listed)  # every key has its line of help (from docs/config.md)

    schema = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["optim"]["properties"]["lr"]["default"] == 2e-5


@pytest.mark.parametrize("config", CONFIGS)
def test_the_schema_accepts_the_repositorys_configs(config):
    from hone.cluster.schema import json_schema

    jsonschema.validate(yaml.safe_load((ROOT / config).read_text()), json_schema())


@pytest.mark.parametrize(
    ("config", "fault"), [({"optim": {"learning_rate": 1e-4}}, "learning_rate"), ({"train": {"max_steps": "ten"}}, "ten")]
)
def test_the_schema_rejects_an_unknown_key_or_a_wrong_type(config, fault):
    from hone.cluster.schema import json_schema

    with pytest.raises(jsonschema.ValidationError, match=fault):
        jsonschema.validate(config, json_schema())
