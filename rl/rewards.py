"""Reward functions: built-in rules, user functions (`package.module:function`) and reward models.

A user reward function has TRL's signature, so existing TRL reward functions work unchanged:

    def my_reward(prompts: list[str], completions: list[str], **fields) -> list[float]:
        ...

`prompts[i]` is the text the model was given, `completions[i]` what it wrote, and `fields` holds every
other field of the prompt rows as lists aligned with them (for example `fields["answer"][i]`), plus
`completion_lengths` (tokens). Name a field as a parameter (`def f(prompts, completions, answer)`) and
hone checks before the run that every prompt row has it. Return one finite number per completion.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hone.training.config import RewardSpec
from hone.training.data import normalize_answer
from hone.training.errors import HoneError

RewardFn = Callable[..., list[float]]
# Passed to every function beside the row fields; not a row field itself.
EXTRA_FIELDS = ("completion_lengths",)


class RewardError(HoneError, ValueError):
    """A reward cannot be used or returned a bad value; the message names the reward, the sample and the fix."""


def reward_name(spec: RewardSpec) -> str:
    if spec.name:
        return spec.name
    if spec.type == "function":
        return spec.function.rpartition(":")[2]
    return spec.type


# ----------------------------------------------------------------------------------------------------
# Built-in rules: pure functions of the texts


def exact_match(completions: list[str], references: list[Any]) -> list[float]:
    """1 when the completion equals the reference, ignoring case and whitespace runs."""
    return [float(normalize_answer(c) == normalize_answer(r)) for c, r in zip(completions, references, strict=True)]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def numeric_match(completions: list[str], references: list[Any], tolerance: float = 1e-6) -> list[float]:
    """1 when the last number in the completion equals the reference number (commas ignored). The last,
    because models often restate the question ("17 + 25 = 42") before the answer."""
    out = []
    for completion, reference in zip(completions, references, strict=True):
        got, want = last_number(completion), last_number(str(reference))
        out.append(float(got is not None and want is not None and abs(got - want) <= tolerance * max(1.0, abs(want))))
    return out


def regex_match(completions: list[str], pattern: str) -> list[float]:
    compiled = re.compile(pattern)
    return [float(compiled.search(c) is not None) for c in completions]


def length_penalty(lengths: list[int], target_length: int) -> list[float]:
    """0 up to target_length tokens, then -(excess / target_length): long answers cost in proportion."""
    return [-max(0, n - target_length) / target_length for n in lengths]


def builtin(spec: RewardSpec) -> RewardFn:
    """The spec as a function with the common signature."""
    if spec.type == "exact_match":
        return lambda prompts, completions, **f: exact_match(completions, f[spec.field])
    if spec.type == "numeric_match":
        return lambda prompts, completions, **f: numeric_match(completions, f[spec.field])
    if spec.type == "regex":
        return lambda prompts, completions, **f: regex_match(completions, spec.pattern)
    if spec.type == "length_penalty":
        return lambda prompts, completions, **f: length_penalty(f["completion_lengths"], spec.target_length)
    raise ValueError(f"no built-in reward {spec.type!r}")


def fields_needed(spec: RewardSpec, fn: RewardFn | None) -> list[str]:
    """Row fields a reward reads: the reference field of a built-in, or the named parameters of a function."""
    if spec.type in ("exact_match", "numeric_match"):
        return [spec.field]
    if spec.type == "function" and fn is not None:
        params = inspect.signature(fn).parameters.values()
        named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty]
        return [n for n in named if n not in ("prompts", "completions", *EXTRA_FIELDS)]
    return []


# ----------------------------------------------------------------------------------------------------
# User functions


def import_function(spec: RewardSpec, key: str, search_dirs: list[str]) -> RewardFn:
    """Import `package.module:function` and check it can be called as a reward function."""
    module_name, _, attr = spec.function.partition(":")
    for folder in search_dirs:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import error inside the user's module is also theirs to see
        raise RewardError(
            f"{key}.function={spec.function!r}: cannot import module {module_name!r} ({type(err).__name__}: {err}). "
            f"Put it next to the config or on PYTHONPATH (searched: {', '.join(search_dirs) or 'PYTHONPATH'})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"{key}.function={spec.function!r}: module {module_name} has no function {attr!r}")
    check_signature(fn, f"{key}.function={spec.function!r}")
    return fn


def reward_module_files(folder: str, function: str) -> tuple[Path, list[Path]]:
    """What a `module:function` reward needs on another machine: the files of its top-level package (all
    of them, so the package's own imports work) or its one module file, and the folder they sit in (the
    reward's `path`). `hone submit` and `hone k8s render` both ship exactly these."""
    top = function.partition(":")[0].split(".")[0]
    base = Path(folder or ".").expanduser().resolve()
    if (base / top).is_dir():
        files = [p for p in sorted((base / top).rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
        return base, files
    if (base / f"{top}.py").is_file():
        return base, [base / f"{top}.py"]
    raise RewardError(f"module {top} of {function!r} not found in {base}; set the reward's path to the folder holding it")


def check_signature(fn: Callable[..., Any], where: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # builtins without a signature: trust them
    kinds = {p.kind for p in params.values()}
    takes_kwargs = inspect.Parameter.VAR_KEYWORD in kinds
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "completions" not in named or ("prompts" not in named and not takes_kwargs):
        raise RewardError(
            f"{where} has the wrong signature {inspect.signature(fn)}: a reward function is called as "
            "fn(prompts=[...], completions=[...], **fields) and returns one number per completion; "
            "define it as def fn(prompts, completions, **fields)"
        )
    if not takes_kwargs:
        raise RewardError(
            f"{where} has the wrong signature {inspect.signature(fn)}: it must accept **fields (the other row fields "
            "are passed by name), e.g. def fn(prompts, completions, answer, **fields)"
        )


# ----------------------------------------------------------------------------------------------------
# Scoring a batch


def call_reward(name: str, fn: RewardFn, prompts: list[str], completions: list[str], fields: dict[str, list[Any]]) -> list[float]:
    values = fn(prompts=prompts, completions=completions, **fields)
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"reward {name!r} returned {type(values).__name__}, not a list of numbers") from None
    if len(values) != len(completions):
        raise RewardError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
    return values


def bad_values(name: str, values: list[Any], prompts: list[str], completions: list[str]) -> list[tuple[int, str]]:
    """(index, description) of every value that is not a finite number."""
    bad = []
    for i, value in enumerate(values):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            bad.append(
                (i, f"reward {name!r} returned {value!r} for sample {i} (prompt {prompts[i]!r}, completion {completions[i]!r})")
            )
    return bad
