import pytest

from hone.training.config import ConfigError, load_config


def base(*extra: str) -> list[str]:
    return ["model.source=/m", "data.train=[/d.jsonl]", *extra]


def test_defaults_and_dotted_overrides():
    cfg = load_config(None, base("optim.lr=1e-5", "train.grad_accum=4", "lora.target_modules=[q_proj, v_proj]"))
    assert cfg.optim.lr == 1e-5
    assert cfg.train.grad_accum == 4
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.mode == "sft"


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr; did you mean optim\.lr\?"):
        load_config(None, base("optim.lrr=1e-5"))
    with pytest.raises(ConfigError, match=r"did you mean train\.micro_batch_per_device"):
        load_config(None, base("train.micro_batch_per_gpu=2"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.micro_batch_per_device=0", r"train\.micro_batch_per_device=0 is invalid: it must be greater than 0"),
        ("optim.lr=-0.1", r"optim\.lr=-0\.1 is invalid: it must be greater than 0"),
        ("deepspeed.zero_stage=5", r"deepspeed\.zero_stage=5 is invalid: use 0, 1, 2 or 3"),
        ("mode=finetune", r"mode='finetune' is not allowed; choose one of pretrain, sft"),
        ("train.grad_accum=two", r"train\.grad_accum='two' must be a whole number"),
        ("deepspeed.offload_params=true", r"parameter offload needs deepspeed\.zero_stage=3"),
        ("data.eval=1.5", r"data\.eval=1\.5 is invalid"),
        ("train.label_smoothing=1.0", r"train\.label_smoothing=1\.0 is invalid: use a value in \[0, 1\)"),
        ("train.label_smoothing=-0.1", r"train\.label_smoothing=-0\.1 is invalid: it must be 0 or more"),
    ],
)
def test_invalid_values_name_field_value_and_fix(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(None, base(override))


def test_compile_is_refused_where_it_would_not_apply():
    with pytest.raises(ConfigError, match=r"train\.compile=True is invalid: ZeRO-3 gathers parameters"):
        load_config(None, base("train.compile=true", "deepspeed.zero_stage=3"))
    with pytest.raises(ConfigError, match=r"train\.compile=True is invalid: the rl policy is not compiled yet"):
        load_config(None, base("train.compile=true", "mode=rl"))
    assert load_config(None, base("train.compile=true", "deepspeed.zero_stage=2")).train.compile


def test_missing_model_and_data_are_errors():
    with pytest.raises(ConfigError, match=r"model\.source"):
        load_config(None, ["data.train=[/d.jsonl]"])
    with pytest.raises(ConfigError, match=r"data\.train"):
        load_config(None, ["model.source=/m"])


def test_yaml_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "run.yaml").write_text("mode: pretrain\nmodel: {source: ./model}\ndata: {train: data/a.txt}\noptim: {lr: 1e-4}\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.data.train == [str(tmp_path / "data" / "a.txt")]
    assert cfg.model.source == str(tmp_path / "model")
    assert cfg.optim.lr == 1e-4  # YAML reads 1e-4 as a string; the schema makes it a float


def test_pipeline_paths_follow_where_they_are_written(tmp_path, monkeypatch):
    """In the pipeline file: relative to the file. On the command line: relative to the working directory
    (`defaults.model.source=.venv/.../x.gguf` once became <pipeline folder>/.venv/...)."""
    from hone.cluster.pipeline import load_pipeline

    folder, cwd = tmp_path / "pipe", tmp_path / "work"
    folder.mkdir()
    cwd.mkdir()
    (folder / "p.yaml").write_text(
        "defaults: {model: {source: ./base}}\n"
        "stages:\n  - {name: a, mode: pretrain, data: {train: [a.txt]}}\n"
        "  - {name: b, mode: pretrain, model: {source: previous}, data: {train: [b.txt]}}\n"
    )
    monkeypatch.chdir(cwd)
    plain = load_pipeline(folder / "p.yaml")
    assert plain.stages[0].config.model.source == str(folder / "base")
    assert plain.stages[1].config.data.train == [str(folder / "b.txt")]
    overridden = load_pipeline(folder / "p.yaml", ["defaults.model.source=./mine", "stages.b.data.train=[c.txt]"])
    assert overridden.stages[0].config.model.source == str(cwd / "mine")
    assert overridden.stages[0].config.data.train == [str(folder / "a.txt")]
    assert overridden.stages[1].config.data.train == [str(cwd / "c.txt")]
    assert overridden.stages[1].config.model.source == "previous"


def test_bad_yaml_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_overrides_reach_into_a_pipelines_stages_by_name_or_index():
    from hone.training.config import apply_override

    raw = {"stages": [{"name": "pretrain", "train": {"num_epochs": 2}}, "sft.yaml", {"mode": "rl"}]}
    apply_override(raw, "stages.pretrain.train.num_epochs=1")
    apply_override(raw, "stages.rl.train.max_steps=2")  # an unnamed stage goes by its mode
    apply_override(raw, "stages.0.optim.lr=0.0001")
    assert raw["stages"][0] == {"name": "pretrain", "train": {"num_epochs": 1}, "optim": {"lr": 1e-4}}
    assert raw["stages"][2] == {"mode": "rl", "train": {"max_steps": 2}}
    with pytest.raises(ConfigError, match=r"no entry 'sfx' in that list; its entries are \['pretrain', \"'sft.yaml'\", 'rl'\]"):
        apply_override(raw, "stages.sfx.optim.lr=1")
    with pytest.raises(ConfigError, match="1 is not a section"):
        apply_override(raw, "stages.1.optim.lr=1")  # a stage given as a file is changed in that file
