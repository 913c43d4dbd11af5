"""Experiment configs from command-line flags: one dataclass field per flag of the same name."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


def _convert(value: Any, hint: Any) -> Any:
    """A list flag's strings as the tuple the field holds (tuple[int, ...], tuple[int, int, int], ...)."""
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if args and all(a is args[0] for a in args) and args[0] in (int, float, str):
            return tuple(args[0](v) for v in value)
    return value


def from_flags(cls, flag_values, *, check=None, **values):
    """An instance of the dataclass `cls`, each field read from the flag of the same name.

    A list flag fills a tuple field, its entries converted to the field's
    element type ("3" -> 3 for tuple[int, ...]); `values` set fields directly.

    Args:
      cls: a dataclass whose field names are flag names.
      flag_values: parsed flags (`absl.flags.FLAGS`), or any mapping of name -> object with `.value`.
      check: called with the config; the ValueError it raises becomes an
        `absl.app.UsageError` (a bad command line: usage and the message, no traceback).
      **values: fields not read from flags.

    Raises:
      KeyError: a field has no flag of its name (and no value in `values`).
      ValueError: a list entry does not convert to the element type.
      absl.app.UsageError: `check` rejected the config.

    >>> import types
    >>> @dataclasses.dataclass(frozen=True)
    ... class Run:
    ...     K: tuple[int, ...]
    ...     name: str = "x"
    >>> from_flags(Run, {"K": types.SimpleNamespace(value=["1", "4"])}, name="y")
    Run(K=(1, 4), name='y')
    """
    hints = typing.get_type_hints(cls)
    fields = {}
    for field in dataclasses.fields(cls):
        if field.name in values:
            fields[field.name] = values[field.name]
        else:
            fields[field.name] = _convert(flag_values[field.name].value, hints[field.name])
    config = cls(**fields)
    if check is not None:
        try:
            check(config)
        except ValueError as err:
            from absl import app

            raise app.UsageError(str(err)) from err
    return config
