"""Type and range checks of user-given values, shared by the CLI flags and the pipeline's recipe configs.

Integers in r1kit's flags and configs are counts, sizes, limits or seeds; where a value is optional, 0 means "off",
"all" or "default". Nothing uses a negative integer, so one is always a mistake (a recipe's `steps: -3` trained
nothing and reported success). Values from YAML are checked against the config field's type: `lr: true` or
`steps: 2.7` is an error naming the field, never a silent conversion.
"""
from __future__ import annotations

import math
import types
import typing

from r1kit.errors import R1kitError


def count(value: int, where: str) -> int:
    """`value` if it is a non-negative integer (not a bool), else R1kitError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise R1kitError(f"{where}: expected a non-negative integer, got {value!r}")
    if value < 0:
        raise R1kitError(f"{where}: must be >= 0, got {value}")
    return value


def parse_count(text: str) -> int:
    """argparse `type=` for integer flags: a non-negative integer or ArgumentTypeError (argparse's one-line error)."""
    import argparse

    try:
        return count(int(text), "")
    except ValueError:  # int() failed, or count() rejected it (R1kitError is a ValueError)
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None


def typed(value, tp, where: str):
    """`value` checked against the type hint `tp` (str, int, float, bool, dict[K, V], list[T], tuple[T, ...],
    unions); numbers given as strings are parsed (YAML reads 3e-4, without a dot, as a string)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return typed(value, a, where)
            except R1kitError as e:
                errors.append(str(e).removeprefix(f"{where}: "))
        raise R1kitError(f"{where}: {' or '.join(errors)}")
    if tp is bool:
        if not isinstance(value, bool):
            raise R1kitError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp in (int, float) and isinstance(value, str):
        try:
            value = tp(value)
        except ValueError:
            what = "a non-negative integer" if tp is int else "a number"
            raise R1kitError(f"{where}: expected {what}, got {value!r}") from None
    if tp is int:
        return count(value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise R1kitError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise R1kitError(f"{where}: expected a string, got {value!r}")
        return value
    if (origin or tp) is dict:
        if value is None:  # YAML writes an empty mapping as nothing (`config:`)
            return {}
        if not isinstance(value, dict):
            raise R1kitError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2:
            return {typed(k, args[0], where): typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if (origin or tp) in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise R1kitError(f"{where}: expected a list, got {value!r}")
        if args and (len(args) == 1 or args[-1] is Ellipsis):
            value = [typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif args:
            if len(value) != len(args):
                raise R1kitError(f"{where}: expected {len(args)} items, got {len(value)}")
            value = [typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        return (origin or tp)(value)
    return value  # a type this checker does not know: the config's own __post_init__ decides
