"""The `hone` command.

hone run CONFIG.yaml [key=value ...] [--address ADDR]   train; with no address, on an embedded local Ray cluster
hone validate CONFIG.yaml [key=value ...]              check config, model and data; print statistics
hone tune CONFIG.yaml [key=value ...] [--address ADDR]  a Ray Tune sweep over the config's tune.space
hone report DIR                                        a run/sweep/pipeline dir: print its before/after table, write PNG plots
hone k8s render CONFIG.yaml [key=value ...] [--output FILE]  a KubeRay RayJob (+ ConfigMap, NetworkPolicy) sized from the config
hone submit CONFIG.yaml [key=value ...] --address URL [--wait]  check here, then run it as a job on a Ray cluster
hone jobs list|status ID|logs ID [--follow]|stop ID --address URL  the jobs on a Ray cluster
hone config [--json-schema FILE]                      every config key: type, default, help; a JSON Schema for editors
hone import-config TRL_OR_AXOLOTL.yaml [--from trl|axolotl] [--mode sft|dpo] [-o OUT.yaml]  a hone config from theirs
"""

from __future__ import annotations

import argparse
import sys

# Only light modules here (argparse, yaml, the config schema): `hone --help`, `hone validate` on a broken
# file and `hone jobs` answer without importing torch, ray or transformers (tests/cluster/test_cli.py).
from hone.cluster.jobs import add_jobs_parser
from hone.cluster.k8s import add_k8s_parser, k8s_command
from hone.cluster.pipeline import Pipeline, load_any
from hone.cluster.stop import RunInterrupted, graceful_stop
from hone.cluster.submit import add_submit_parser
from hone.training.config import HoneConfig, to_yaml
from hone.training.errors import HoneError
from hone.training.generation import resolve_backend

DISTRIBUTION = "hone-llm"  # the name on PyPI; the command and the package are `hone`
STATES = {
    "new": "a new run",
    "resume": "holds this run, unfinished: hone run resumes it",
    "finished": "holds this run, finished: hone run shows its result",
    "replace": "holds a different run, which overwrite=true replaces",
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with graceful_stop():
            return _command(args)
    except RunInterrupted as err:
        print(f"hone: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("hone: stopped at once; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except HoneError as err:
        print(f"hone: error: {err}", file=sys.stderr)
        return 1


def _command(args: argparse.Namespace) -> int:
    if args.command == "report":
        from hone.cluster.report import report

        report(args.dir)
        return 0
    if args.command == "k8s":
        return k8s_command(args)
    if args.command == "jobs":
        from hone.cluster.jobs import jobs_command

        return jobs_command(args)
    if args.command == "import-config":
        return _import_config(args)
    if args.command == "config":
        return _config(args)
    if args.command in ("export", "chat", "serve"):
        return _ship(args)
    loaded = load_any(args.config, args.overrides)
    if isinstance(loaded, Pipeline):
        return _pipeline(args, loaded)
    cfg = loaded
    if args.command == "tune":
        from hone.cluster.tune import tune_run

        tune_run(cfg, address=args.address)
        return 0
    if args.command in ("validate", "submit"):
        # `hone submit` checks what `hone validate` does, before anything is packed or sent, except the
        # output_dir: that names a folder on the cluster, which the job checks there.
        validate(cfg, check_output_dir=args.command == "validate")
        if args.command == "submit":
            from hone.cluster.submit import submit_config

            return submit_config(args, cfg)
        return 0
    from hone.cluster.run import run

    run(cfg, address=args.address)
    return 0


def _ship(args: argparse.Namespace) -> int:
    """hone export / chat / serve: a finished run's model, out of hone."""
    if args.command == "chat":
        from hone.cluster.talk import chat

        return chat(args.dir, compare=args.compare, max_new_tokens=args.max_new_tokens, backend=args.backend)
    if args.command == "serve":
        from hone.cluster.talk import serve

        serve(args.dir, args.host, args.port, args.backend)
        return 0
    from hone.cluster.release import export_run, push_to_hub

    folder = export_run(args.dir, args.format, args.output, args.outtype, not args.no_recall_check, args.questions)
    print(f"hone: exported {args.dir} as {args.format} to {folder} (model card: {folder / 'README.md'})")
    if args.push_to_hub:
        print(f"hone: pushed to {push_to_hub(folder, args.push_to_hub)}")
    return 0


def _config(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hone.cluster.schema import json_schema, render

    print(render())
    if args.json_schema:
        Path(args.json_schema).write_text(json.dumps(json_schema(), indent=1) + "\n")
        print(
            f"hone: wrote {args.json_schema}; editors that read YAML schemas complete and check a config with "
            f"`# yaml-language-server: $schema={args.json_schema}` as its first line"
        )
    return 0


def _import_config(args: argparse.Namespace) -> int:
    """A TRL or Axolotl YAML as a hone config: every setting hone has is carried over; the others are listed
    (on stderr, and as comments at the top of the output), never dropped silently."""
    from pathlib import Path

    import yaml

    from hone.training.config import ConfigError
    from hone.training.peer_names import guess_tool, translate

    path = Path(args.file)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read it as YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    tool = args.tool or guess_tool(raw)
    config, unmapped = translate(raw, tool)
    config = {"mode": config.pop("mode", args.mode), **config}
    notes = [f"# hone config from {path.name} ({tool}), by hone import-config"]
    if unmapped:
        notes.append("# not carried over (hone has no such setting, or not with this value):")
        notes += [f"#   {key}: {value!r}: {why}" for key, value, why in unmapped]
        for key, value, why in unmapped:
            print(f"hone: not carried over: {key}: {value!r}: {why}", file=sys.stderr)
    sources = [d["path"] if isinstance(d, dict) else d for d in config.get("data", {}).get("train", [])]
    remote = [d for d in sources if not (path.parent / d).exists()]
    if remote:
        notes.append(
            f"# data.train names {', '.join(remote)}, not a file next to this config: read as hub dataset ids "
            "(datasets.load_dataset; a machine without the hub needs a local copy named here instead)"
        )
        print(f"hone: note: {notes[-1][2:]}", file=sys.stderr)
    text = "\n".join(notes) + "\n" + yaml.safe_dump(config, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
        print(
            f"hone: wrote {args.output} ({len(unmapped)} setting(s) not carried over); check it with hone validate {args.output}"
        )
    else:
        print(text, end="")
    return 0


def _pipeline(args: argparse.Namespace, pipeline: Pipeline) -> int:
    from hone.cluster.pipeline import check_answer_eval, check_stages, run_pipeline

    if args.command == "tune":
        raise HoneError(f"{pipeline.path} is a pipeline (it has stages:); hone tune sweeps one run config, not a pipeline")
    if args.command == "run":
        run_pipeline(pipeline, address=args.address)
        return 0
    check_stages(pipeline.stages)
    if pipeline.eval:
        check_answer_eval(pipeline.eval)
    print(f"# pipeline -> {pipeline.output_dir}")
    for index, stage in enumerate(pipeline.stages):
        c = stage.config
        print(f"stage {index + 1}: {stage.name:<12} mode {c.mode:<8} model {c.model.source:<40} -> {c.output_dir}")
    if pipeline.eval:
        print(f"eval:    every model answers the questions in {pipeline.eval.data}")
    if args.command == "submit":
        from hone.cluster.submit import submit_pipeline

        return submit_pipeline(args, pipeline)
    return 0


def validate(cfg: HoneConfig, check_output_dir: bool = True) -> int:
    if cfg.tune.space:
        from hone.cluster.tune import check_tune

        check_tune(cfg)
    elif check_output_dir:  # a sweep's output_dir holds its trials, each checked when it starts
        from hone.cluster.rundir import inspect

        run_dir, state = inspect(cfg)  # a folder hone may not use is refused here, as `hone run` would
        print(f"# output_dir {run_dir}: {STATES[state]}")
    if cfg.mode == "rl":
        return validate_rl(cfg)
    if cfg.mode == "synth":
        return validate_synth(cfg)
    from hone.training.prepare import prepare

    prepared = prepare(cfg)
    print("# resolved config")
    print(to_yaml(cfg))
    print(format_stats(prepared.summary(), cfg))
    return 0


def validate_synth(cfg: HoneConfig) -> int:
    """The documents read and chunked, the questions to keep out read, the generator named; none started."""
    from hone.cluster.synth_run import loads_a_local_model, prepare_synth

    prepared = prepare_synth(cfg)
    docs = sorted({c.doc for c in prepared.chunks})
    print("# resolved config")
    print(to_yaml(cfg))
    print(f"# documents: {len(docs)} ({', '.join(docs[:5])}{' ...' if len(docs) > 5 else ''}), {len(prepared.chunks)} chunks")
    print(f"# generator: {prepared.generator.split('|')[0]}; keeping out {len(prepared.eval_questions)} evaluation questions")
    if prepared.replay:
        print(f"# replay: {cfg.model.source} answers {len(prepared.replay)} general instructions (replay.jsonl)")
    if loads_a_local_model(cfg, prepared):
        backend, why = resolve_backend(cfg.generation.backend)
        print(f"# generation engine: {backend} ({why})")
    return 0


def validate_rl(cfg: HoneConfig) -> int:
    """Prompts, rewards (imported and checked) and the step arithmetic, with no actor started."""
    from hone.rl.prepare import prepare_rl
    from hone.rl.rewards import reward_name

    prepared = prepare_rl(cfg)
    rl = cfg.rl
    print("# resolved config")
    print(to_yaml(cfg))
    print("# rl")
    print(f"model:            {prepared.resolved_model}")
    print(
        f"prompts:          {len(prepared.train_prompts)} train, {len(prepared.eval_prompts)} held out; too long, dropped: {prepared.dropped}"
    )
    print(f"rewards:          {', '.join(f'{reward_name(s)} x {s.weight:g}' for s in rl.rewards)}")
    print(
        f"each step:        {rl.prompts_per_step} prompts x {rl.group_size} samples = {rl.prompts_per_step * rl.group_size} samples"
    )
    print(f"total steps:      {prepared.total_steps}")
    backend, why = resolve_backend(cfg.generation.backend)
    fallback = " where it can run this model, else hf" if cfg.generation.backend == "auto" and backend == "vllm" else ""
    print(f"rollout engine:   {backend}{fallback} ({why})")
    return 0


def format_stats(stats: dict, cfg: HoneConfig) -> str:
    t, s = cfg.train, cfg.scaling
    lines = [
        "# data",
        f"model:            {stats['model']} ({stats['objective']}{'' if stats['objective'] == 'reward' else ' LM'})",
        f"format:           {stats['format']}",
    ]
    for split in ("train", "eval"):
        d = stats[split]
        dropped = ", ".join(f"{n} ({why})" for why, n in d["dropped"].items()) or "0"
        what = "split into max_seq_len pieces" if cfg.mode == "pretrain" else "truncated to max_seq_len"
        lines += [
            f"{split} rows:       {d['rows']}  ->  {d['examples']} examples, {d['tokens']} tokens "
            f"({d['loss_tokens']} trained on), longest {d['max_tokens']}",
            f"{split} truncated:  {d['truncated']} rows {what}; dropped: {dropped}",
        ]
    lines += [
        f"packing:          {'on' if cfg.data.packing else 'off'} -> {stats['train_sequences_after_packing']} training sequences"
        + (
            f", the {shared} prompt tokens every row starts with once per sequence"
            if (shared := stats["shared_prefix_tokens"])
            else ""
        ),
        f"token cache:      {'reused' if stats['token_cache']['reused'] else 'written'} {stats['token_cache']['path']}",
        "# batches",
        f"global batch:     {stats['global_batch']} = micro_batch_per_device {t.micro_batch_per_device} x grad_accum "
        f"{t.grad_accum} x num_workers {s.num_workers}",
        f"steps per epoch:  {stats['steps_per_epoch']}",
        f"total steps:      {stats['total_steps']}" + (" (train.max_steps)" if t.max_steps else f" ({t.num_epochs} epochs)"),
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hone", description="Fine-tune a language model on your own data.")
    parser.add_argument("--version", action="version", version=f"hone {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (("run", "train the mode the config names"), ("validate", "check config, model and data"))
    for name, text in (*commands, ("tune", "sweep the config's tune.space with Ray Tune")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("config", help="YAML file of config overrides")
        cmd.add_argument("overrides", nargs="*", help="dotted overrides such as optim.lr=1e-5")
        if name in ("run", "tune"):
            cmd.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    cmd = sub.add_parser("report", help="print a run's before/after table and write its plots (PNG) into its dir")
    cmd.add_argument("dir", help="a run, sweep or pipeline output dir")
    cmd = sub.add_parser("config", help="every config key with its type, default and help; --json-schema for editors")
    cmd.add_argument("--json-schema", default=None, metavar="FILE", help="also write a JSON Schema of the config here")
    cmd = sub.add_parser("import-config", help="turn a TRL or Axolotl YAML config into a hone config")
    cmd.add_argument("file", help="the TRL or Axolotl YAML")
    cmd.add_argument("--from", dest="tool", choices=("trl", "axolotl"), default=None, help="whose config (default: guessed)")
    cmd.add_argument("--mode", choices=("sft", "dpo"), default="sft", help="what it trains, when the file does not say")
    cmd.add_argument("-o", "--output", default=None, help="write the hone config here (default: print it)")
    cmd = sub.add_parser("export", help="a finished run's model as a HF dir, a LoRA adapter or GGUF, with a model card")
    cmd.add_argument("dir", help="a finished run dir")
    cmd.add_argument("--format", choices=("hf", "adapter", "gguf"), default="hf", help="what to write (default: hf)")
    cmd.add_argument("--outtype", choices=("f16", "bf16", "q8_0", "f32"), default="f16", help="gguf: tensor type (default f16)")
    cmd.add_argument("-o", "--output", default=None, help="a new folder to write (default: RUN_DIR/export/FORMAT)")
    cmd.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload it to this hub model repository")
    cmd.add_argument(
        "--questions", default=None, metavar="FILE", help="gguf: the questions to ask it (default: an sft run's eval split)"
    )
    cmd.add_argument("--no-recall-check", action="store_true", help="gguf: do not ask the held-out questions of the file")
    for name, text in (
        ("chat", "talk to a finished run's model in the terminal"),
        ("serve", "an OpenAI-compatible server of it"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("dir", help="a finished run dir")
        cmd.add_argument(
            "--backend", choices=("auto", "hf", "vllm"), default="auto", help="generation engine (auto: vllm if installed)"
        )
        if name == "chat":
            cmd.add_argument("--compare", action="store_true", help="the base model's answer beside the tuned one's")
            cmd.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
        else:
            cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
            cmd.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_k8s_parser(sub)
    add_submit_parser(sub)
    add_jobs_parser(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
