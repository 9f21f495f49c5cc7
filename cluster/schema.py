"""`hone config`: every config field with its type, default and one line of help, and a JSON Schema of the
config for editors (YAML language servers read it: `# yaml-language-server: $schema=hone.schema.json`).

Types and defaults come from the dataclasses in training/config.py; the help from the config reference
(docs/config.md, which a test keeps complete), so each fact is written once.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from hone.training.config import HoneConfig

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def field_help() -> dict[str, str]:
    """key -> its meaning, from the reference's table ({} when the docs are not installed with hone)."""
    if not REFERENCE.exists():
        return {}
    rows = re.findall(r"^\| `([^`]+)` \| [^|]* \| (.*) \|$", REFERENCE.read_text(), re.M)
    return {key: meaning.replace("`", "") for key, meaning in rows}


def schema_rows(cls: type = HoneConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, type, default) of every settable field, in the schema's order."""
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if _is_section(hint):
            rows += schema_rows(hint, f"{prefix}{f.name}.")
            continue
        default = _default(f)
        rows.append((prefix + f.name, _type_name(hint), "-" if default in ("", None) else repr(default)))
    return rows


def render() -> str:
    """Two lines a field: `key: type = default`, then its help's first sentence."""
    helps = field_help()
    lines = []
    for key, kind, default in schema_rows():
        lines.append(f"{key}: {kind} = {default}")
        meaning = helps.get(key, "")
        if meaning:
            lines.append("    " + re.split(r"(?<=[.;])\s", meaning, maxsplit=1)[0].rstrip(";"))
    if not helps:
        lines.append("(the help text is in the config reference, docs/config.md, in hone's repository)")
    return "\n".join(lines)


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of a hone config file: every key, its type, default and help."""
    schema = _object(HoneConfig, "", field_help())
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "hone config", **schema}


def _object(cls: type, prefix: str, helps: dict[str, str]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], prefix + f.name
        if _is_section(hint):
            properties[f.name] = _object(hint, f"{key}.", helps)
            continue
        prop = _json_type(hint)
        default = _default(f)
        if default is not None and not dataclasses.is_dataclass(default):
            prop["default"] = default
        if key in helps:
            prop["description"] = helps[key]
        properties[f.name] = prop
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _options(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else ()


def _json_type(hint: Any) -> dict[str, Any]:
    if _options(hint):
        return {"anyOf": [_json_type(option) for option in _options(hint)]}
    origin = typing.get_origin(hint)
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return {"type": "array", "items": _json_type(item)}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if _is_section(hint):
        return _object(hint, "", {})
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    return {"type": simple[hint]} if hint in simple else {}


def _type_name(hint: Any) -> str:
    if _options(hint):
        return " | ".join(_type_name(option) for option in _options(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "|".join(str(v) for v in typing.get_args(hint))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(hint))}]"
    return getattr(hint, "__name__", str(hint))
