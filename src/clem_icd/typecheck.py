"""Settings values checked against their declared types: the one rule for recipe sections,
command-line overrides and the TF-IDF options, so that `batch_size: 16.0`, `"false"` for a bool
or `"ten"` for a number stops with one line instead of reaching the model as something else
(a string "false" is true; 16.0 breaks a modulo check three layers down).

What YAML makes hard to write exactly is accepted: a float setting takes a whole number and a
numeric string (YAML 1.1 reads 1e-4, without a dot, as a string), an int setting takes a string of
digits, and a string setting takes YAML 1.1's booleans as "yes"/"no" (it reads `no` as false,
the spelling of `mixed_precision: no`). Nothing else is converted.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping

from clem_icd.errors import ClemError

_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
          dict: "a mapping of keys to values", list: "a list"}
_WHOLE = re.compile(r"\s*[+-]?[0-9]+\s*")


def expected(wanted) -> str:
    """How a message names the type `wanted` (e.g. 'a whole number or null')."""
    origin, args = typing.get_origin(wanted), typing.get_args(wanted)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else expected(arg) for arg in args)
    if origin is list and args:
        return f"a list of {expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return _NAMES.get(origin or wanted, getattr(wanted, "__name__", str(wanted)))


def checked(name: str, wanted, value):
    """`value` as a setting of type `wanted` (a type hint: bool, int, float, str, dict, list[X],
    X | None); raises ClemError "<name>: got <value>, expected <type>" when it is not one."""
    origin, args = typing.get_origin(wanted), typing.get_args(wanted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return checked(name, arg, value)
            except ClemError:
                continue
        _refuse(name, wanted, value)
    if origin is list:
        if not isinstance(value, list):  # a bare string would be read as a list of characters
            _refuse(name, wanted, value)
        item = args[0] if args else typing.Any
        return [checked(f"{name}, item {i}", item, v) for i, v in enumerate(value)]
    if wanted is typing.Any:
        return value
    wanted = origin or wanted
    if wanted is bool:
        if isinstance(value, bool):  # not 0/1, not "false" (a non-empty string is true)
            return value
    elif wanted is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _WHOLE.fullmatch(value):
            return int(value)
    elif wanted is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif wanted is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "yes" if value else "no"
    elif wanted is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif isinstance(value, wanted):
        return value
    _refuse(name, wanted, value)


def _refuse(name: str, wanted, value) -> typing.NoReturn:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ClemError(f"{name}: got {shown} ({type(value).__name__}), expected {expected(wanted)}")
