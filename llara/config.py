"""Dataclass configs <-> argparse flags, so every flag has help text and every run saves its config as JSON."""
from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse's keyword
    """A dataclass field carrying its command-line help (and optional ``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag-name`` per field of ``cls``; bools become ``--flag`` / ``--no-flag``."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        help_text = meta.pop("help", "")
        typ = hints[f.name]
        if typ is bool:
            parser.add_argument(flag, default=f.default, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        base = {int: int, float: float, str: str}.get(typ, str)
        if typ == (str | None) or typ == (int | None):
            base = int if typ == (int | None) else str
        parser.add_argument(flag, type=base, default=f.default, help=f"{help_text} (default: %(default)s)", **meta)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed flags that belong to it."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def refuse_below(parser: argparse.ArgumentParser, checks) -> None:
    """``parser.error`` for the first ``(flag, value, lowest allowed)`` whose value is below its bound."""
    for flag, value, low in checks:
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")

