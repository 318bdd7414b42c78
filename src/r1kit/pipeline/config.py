"""Typed stage configs from recipe dicts, and the content hash that keys a stage's cached outputs.

Every stage kind has one small `@dataclass` config. A recipe gives it as a plain dict (YAML); `from_dict` builds the
dataclass, recursing into nested dataclass fields (e.g. an RL stage's `grpo: GRPOConfig`), rejecting unknown keys and
values of the wrong type, so a typo fails before any stage runs rather than being silently ignored or converted.

A field marked `file_field()` names a file whose *content* belongs to the stage's identity: `stage_key` hashes the
file's bytes, so editing a user's jsonl re-runs the stages that read it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path

from r1kit.checks import typed
from r1kit.errors import R1kitError

KEY_VERSION = 1  # bump when stage semantics change in a way old cached outputs should not survive


def file_field(default: str = "", **kw):
    """A str config field naming a file; its content is part of the stage key."""
    return dataclasses.field(default=default, metadata={"file": True}, **kw)


def from_dict(cls, data, where: str = "config"):
    """Build dataclass `cls` from a recipe mapping, recursing into dataclass-typed fields. Unknown or missing keys,
    values of the wrong type (r1kit.checks.typed) and the config's own `__post_init__` checks are R1kitErrors that
    name the field, so a recipe fails before any stage runs."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise R1kitError(f"{where}: expected a mapping of {cls.__name__} options, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise R1kitError(f"{where}: unknown option(s) {', '.join(map(str, unknown))} for {cls.__name__} "
                         f"(known: {', '.join(sorted(fields))})")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and n not in data]
    if required:
        raise R1kitError(f"{where}: missing {', '.join(required)}")
    kw = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kw[name] = from_dict(tp, value, f"{where}.{name}")
        else:
            kw[name] = typed(value, tp, f"{where}.{name}")
    try:
        return cls(**kw)
    except R1kitError as e:  # a config's own __post_init__ check
        raise R1kitError(f"{where}: {e}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def _file_digests(cfg) -> dict[str, str]:
    """{field path: sha256 of the file's bytes} for every non-empty file_field, nested configs included."""
    out = {}
    if not dataclasses.is_dataclass(cfg):
        return out
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("file") and value:
            from r1kit.tasks import resolve_data_path

            out[f.name] = hashlib.sha256(resolve_data_path(value).read_bytes()).hexdigest()
        elif dataclasses.is_dataclass(value):
            out |= {f"{f.name}.{k}": v for k, v in _file_digests(value).items()}
    return out


def stage_key(kind: str, cfg, input_keys: dict[str, str]) -> str:
    """sha256 over the stage kind, its full config (defaults included), the content of the files it names and the
    keys of the stages it reads. A change anywhere upstream changes every downstream key."""
    blob = json.dumps({"v": KEY_VERSION, "kind": kind, "config": to_dict(cfg), "files": _file_digests(cfg),
                       "inputs": dict(sorted(input_keys.items()))}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
