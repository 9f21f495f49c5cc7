"""`hone run` with mode synth: a folder of documents becomes checked training data.

    hone run synth.yaml          # mode: synth, data.train: [docs/], data.eval: [my_eval.jsonl]

Reads top to bottom: read and chunk the documents (no Ray yet) -> claim the run dir -> ask the generator
for every reply the cache lacks (a Ray actor pool for a local model, HTTP for an endpoint, nothing for the
templates), with a progress bar -> parse, ground and filter every item -> write the data files and the
report. A rerun reuses the cached replies, so a killed run resumes where it stopped.

The run dir then holds ordinary files a user can read, edit and train on:
    qa.jsonl      chat rows (messages, source, chunk, evidence, style) for sft
    text.jsonl    text rows (text, source, chunk, kind) for pretrain: the chunks, their restatements and a
                  share (synth.qa_in_text) of the pairs as plain text
    rl.jsonl      rl prompts (messages: the question; answer and key_fact: the grounded answer), one per answer
    probes.jsonl  document-recall probes, held out of qa.jsonl (group: doc_recall), for a pipeline's eval
    replay.jsonl  with synth.replay_prompts: the untuned model's own answers to general instructions, chat
                  rows to mix into sft against forgetting (hone.synth.replay)
    report.json / report.md   per document and per chunk: kept, rejected and why, exposures
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone.cluster.connect import ray_session
from hone.cluster.hooks import NO_HOOKS, RunHooks
from hone.cluster.rundir import claim, finish_run, finished_run, inspect
from hone.synth.cache import ReplyCache
from hone.synth.documents import Chunk, chunk_document, read_documents
from hone.synth.parse import parse_qa
from hone.synth.probes import doc_recall_probes
from hone.synth.quality import EvalOverlap
from hone.synth.replay import ReplayRequest, read_replay_prompts, replay_requests, replay_rows
from hone.synth.step import Recipe, Synthesis, assemble, by_document, fetch, missing, plan
from hone.training.config import HoneConfig, data_sources
from hone.training.data import DataError, load_rows
from hone.training.files import write_json, write_text
from hone.training.models import model_identity

FILES = {"qa": "qa.jsonl", "text": "text.jsonl", "rl": "rl.jsonl", "probes": "probes.jsonl", "replay": "replay.jsonl"}


@dataclass(frozen=True)
class PreparedSynth:
    chunks: list[Chunk]
    eval_questions: list[str]  # what the synthesis must not write (data.eval), read before anything runs
    recipe: Recipe
    generator: str  # its identity in the cache key; "none" for the templates alone
    replay: list[str]  # synth.replay_prompts, read and checked


def prepare_synth(cfg: HoneConfig) -> PreparedSynth:
    """The documents, chunked, and the evaluation questions to keep out; a DataError naming the folder
    when nothing is readable. No Ray, no model: `hone validate` runs exactly this."""
    chunks: list[Chunk] = []
    for source in data_sources(cfg.data.train):
        for doc, text in read_documents(Path(source.path)).items():
            chunks += chunk_document(doc, text, cfg.synth.chunk_words)
    if not chunks:
        raise DataError(f"data.train {cfg.data.train}: the documents hold no text to synthesise from")
    questions = [] if isinstance(cfg.data.eval, float) else [_question(r) for r in load_rows(cfg.data.eval)]
    replay = read_replay_prompts(cfg.synth.replay_prompts) if cfg.synth.replay_prompts else []
    return PreparedSynth(chunks, [q for q in questions if q], _recipe(cfg), _generator_id(cfg), replay)


def _question(row: dict[str, Any]) -> str:
    """The user turn of an evaluation row, whatever its format."""
    for key in ("question", "prompt", "instruction"):
        if isinstance(row.get(key), str):
            return row[key]
    messages = row.get("messages") or row.get("prompt") or []
    return next((m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"), "")


def _recipe(cfg: HoneConfig) -> Recipe:
    s, asks = cfg.synth, _has_generator(cfg)
    return Recipe(
        questions_per_style=s.questions_per_style,
        styles=tuple(s.styles) if asks else (),
        restatements=tuple(s.restatements) if asks else (),
        samples=s.samples,
        templates=s.templates,
        max_pairs_per_answer=s.max_pairs_per_answer,
    )


def _has_generator(cfg: HoneConfig) -> bool:
    return bool(cfg.synth.generator.base_url) or cfg.synth.generator.source != "none"


def loads_a_local_model(cfg: HoneConfig, prepared: PreparedSynth) -> bool:
    """Whether the run generates with a model of its own (replay answers, or a local generator), and so
    with hone's generation engine; an endpoint generates elsewhere."""
    return bool(prepared.replay) or (_has_generator(cfg) and not cfg.synth.generator.base_url)


def _generator_id(cfg: HoneConfig) -> str:
    g = cfg.synth.generator
    if g.base_url:
        who = f"{g.base_url.rstrip('/')}|{g.model}"
    elif g.source == "none":
        return "none"
    else:
        who = model_identity(cfg.model.source if g.source == "tuned" else g.source)
    return f"{who}|max_new_tokens={g.max_new_tokens}|temperature={g.temperature}"


def run_synth(cfg: HoneConfig, address: str | None = None, hooks: RunHooks = NO_HOOKS) -> dict[str, Any]:
    prepared = prepare_synth(cfg)
    run_dir, state = inspect(cfg)
    if state == "finished":
        return finished_run(run_dir)
    started = time.time()
    cache = ReplyCache(Path(cfg.synth.cache_dir or Path.home() / ".cache/hone/synth").expanduser())
    requests = plan(prepared.chunks, prepared.recipe, prepared.generator)
    todo = missing(requests, cache)
    sy = cfg.synth
    replays = replay_requests(
        prepared.replay, model_identity(cfg.model.source), sy.replay_max_new_tokens, sy.replay_temperature, sy.replay_samples
    )
    replay_todo = missing(replays, cache)
    needs_ray = (bool(todo) and not cfg.synth.generator.base_url) or bool(replay_todo)
    with ray_session(address) if needs_ray else nullcontext():
        run_dir, state = claim(cfg)
        print(
            f"hone: synth run in {run_dir}: {len(prepared.chunks)} chunks, {len(requests)} generator replies "
            f"({len(requests) - len(todo)} cached), generator {prepared.generator.split('|')[0]}",
            flush=True,
        )
        if todo:
            with _generator(cfg) as generate:
                _fetch_with_progress(todo, generate, cache, cfg.synth.generator.batch_size)
        if replay_todo:
            _answer_replay(cfg, replay_todo, cache)
    replay = [str((cache.get(r.key) or {}).get("reply", "")) for r in replays]
    probes = doc_recall_probes(prepared.chunks, cfg.seed)
    keep_out = EvalOverlap(prepared.eval_questions + [p["messages"][0]["content"] for p in probes])
    synthesis = assemble(prepared.chunks, requests, cache, prepared.recipe, keep_out)
    replayed = replay_rows([r.prompt for r in replays], replay, sy.replay_prompts)
    summary = _write_outputs(run_dir, synthesis, probes, replayed, cfg, time.time() - started)
    finish_run(run_dir, summary)
    return summary


def _answer_replay(cfg: HoneConfig, todo: list[ReplayRequest], cache: ReplyCache) -> None:
    """The model being tuned answers the replay prompts (greedily, or sampled at synth.replay_temperature
    with nothing cut from the distribution) on a pool of local actors, whatever writes the other items:
    replay must be this model's own answers. Cached batch by batch."""
    from tqdm.auto import tqdm

    from hone.synth.local import LocalPool, LocalSettings
    from hone.training.models import resolve_source

    g = cfg.synth.generator
    sy = cfg.synth
    source = resolve_source(cfg.model.source)
    settings = LocalSettings(
        source, sy.replay_max_new_tokens, sy.replay_temperature, 1.0, g.batch_size, cfg.seed, backend=cfg.generation.backend
    )
    pool = LocalPool(settings, g.num_workers, g.cpus, g.gpus)
    try:
        with tqdm(total=len(todo), desc="replay answers", unit="answer") as bar:
            for done in fetch(todo, pool.generate, cache, g.batch_size * g.num_workers):
                bar.update(done)
    finally:
        pool.shutdown()


@contextmanager
def _generator(cfg: HoneConfig) -> Iterator[Callable[[list[str]], list[str]]]:
    """The generator as a function of prompts: an endpoint, or a pool of local actors shut down after."""
    g = cfg.synth.generator
    if g.base_url:
        from hone.synth.endpoint import Endpoint

        endpoint = Endpoint(g.base_url, g.model, g.api_key_env, g.max_new_tokens, g.temperature, g.batch_size)
        endpoint.key()  # a missing key variable fails here, before any request
        yield endpoint.generate
        return
    from hone.synth.local import LocalPool, LocalSettings
    from hone.training.models import resolve_source

    source = resolve_source(cfg.model.source if g.source == "tuned" else g.source)
    settings = LocalSettings(
        source, g.max_new_tokens, g.temperature, batch_size=g.batch_size, seed=cfg.seed, backend=cfg.generation.backend
    )
    pool = LocalPool(settings, g.num_workers, g.cpus, g.gpus)
    try:
        yield pool.generate
    finally:
        pool.shutdown()


def _fetch_with_progress(todo: list[Any], generate: Callable[[list[str]], list[str]], cache: ReplyCache, batch: int) -> None:
    """The replies asked for, with a bar of replies done, the time left, and the pairs read so far (the
    checks come after, in `assemble`)."""
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc="synthesis", unit="reply") as bar:
        read = 0

        def counted(prompts: list[str]) -> list[str]:
            nonlocal read
            replies = generate(prompts)
            read += sum(len(parse_qa(r)[0]) for r in replies)
            return replies

        for done in fetch(todo, counted, cache, batch):
            bar.update(done)
            bar.set_postfix(pairs_read=read)


def qa_as_text(qa_rows: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """A seeded `share` of the pairs as pretraining text: the facts in question form from the start
    (Jiang et al., 2024: QA before and with the documents beats documents then QA)."""
    rng = random.Random(seed)
    picked = [r for r in qa_rows if rng.random() < share]
    return [
        {
            "text": f"Question: {r['messages'][0]['content']}\nAnswer: {r['messages'][1]['content']}",
            "source": r["source"],
            "chunk": r["chunk"],
            "kind": "qa",
        }
        for r in picked
    ]


def rl_prompts(qa_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One rl prompt per distinct answer (its first question), rewarded by that grounded answer."""
    seen: set[str] = set()
    rows = []
    for r in qa_rows:
        answer = r["messages"][1]["content"]
        if answer.casefold() in seen:
            continue
        seen.add(answer.casefold())
        rows.append(
            {"messages": r["messages"][:1], "answer": answer, "key_fact": answer, "source": r["source"], "chunk": r["chunk"]}
        )
    return rows


def _write_outputs(
    run_dir: Path, s: Synthesis, probes: list[dict[str, Any]], replay: list[dict[str, Any]], cfg: HoneConfig, seconds: float
) -> dict[str, Any]:
    text = s.text_rows + qa_as_text(s.qa_rows, cfg.synth.qa_in_text, cfg.seed)
    outputs = {"qa": s.qa_rows, "text": text, "rl": rl_prompts(s.qa_rows), "probes": probes}
    if cfg.synth.replay_prompts:
        outputs["replay"] = replay
    for name, rows in outputs.items():
        write_text(run_dir / FILES[name], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    chunks = [c.as_dict() for c in s.chunks]
    documents = by_document(s.chunks)
    write_json(run_dir / "report.json", {"documents": documents, "chunks": chunks}, indent=2)
    write_text(run_dir / "report.md", format_report(documents, chunks))
    counts = {"qa_rows": len(s.qa_rows), "text_rows": len(text), "probes": len(probes), "chunks": len(chunks)}
    if "replay" in outputs:
        counts["replay_rows"] = len(replay)
    print(
        f"hone: synth: {counts['qa_rows']} question/answer rows, {counts['text_rows']} text rows, {counts['probes']} "
        f"probes{', ' + str(len(replay)) + ' replay rows' if 'replay' in outputs else ''} from {counts['chunks']} chunks "
        f"-> {run_dir} (report.md says what was kept and why)",
        flush=True,
    )
    files = {k: str(run_dir / FILES[k]) for k in outputs}
    return {"mode": "synth", "eval": {"before": {}, "after": counts}, "files": files, "model_path": "", "seconds": seconds}


def format_report(documents: dict[str, dict[str, Any]], chunks: list[dict[str, Any]]) -> str:
    """report.md: one line per document, then one per chunk."""

    def why(rejected: dict[str, int]) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1])) or "-"

    lines = ["# Synthesis report", "", "| document | chunks | QA kept | restatements kept | exposures | rejected (why) |"]
    lines.append("|---|---|---|---|---|---|")
    for doc, d in documents.items():
        lines.append(
            f"| {doc} | {d['chunks']} | {d['qa_kept']} | {d['restatements_kept']} | {d['exposures']} | {why(d['rejected'])} |"
        )
    lines += [
        "",
        "| document | chunk | heading | QA kept | restatements kept | exposures | rejected (why) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in chunks:
        lines.append(
            f"| {c['doc']} | {c['chunk']} | {c['heading']} | {c['qa_kept']} | {c['restatements_kept']} | {c['exposures']} | {why(c['rejected'])} |"
        )
    return "\n".join(lines) + "\n"
