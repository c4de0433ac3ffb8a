"""Command-line options made from config dataclasses: one flag per field, its type from the field's annotation, its
help from ``field(metadata={"help": ...})`` with the dataclass default shown. Nothing is retyped here.

Every option's argparse default is None ("not given"), so a preset or the dataclass decides; ``option_values``
returns only the fields that were given, ready for ``TrainingConfig.build``, ``ArenaConfig(**...)`` and the like.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SCALARS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str}


@dataclass(frozen=True)
class Option:
    """How one field appears on the command line; everything but ``field`` is optional.

    ``flag``: the flag (default ``--`` + the field name with dashes: ``max_eval_examples`` -> ``--max-eval-examples``),
    an alias where the contract names it otherwise (``learning_rate`` -> ``--lr``). ``invert``: a bool field whose flag
    sets it False (``hybrid`` -> ``--dense``). ``separator``: a list field given as one value split on it
    (``--variants a,b``) instead of a repeatable flag (``--stop X --stop Y``). ``choices``, ``metavar``: as argparse.
    ``note``: appended to the field's help. ``default``: the command's own default, used and shown (the dataclass's
    otherwise)."""

    field: str
    flag: str | None = None
    invert: bool = False
    separator: str | None = None
    choices: Sequence[str] | None = None
    metavar: str | None = None
    note: str = ""
    default: Any = None


def flag_name(field_name: str) -> str:
    """``max_eval_examples`` -> ``--max-eval-examples``."""
    return "--" + field_name.replace("_", "-")


def _field_type(cls: type, name: str, annotation: Any) -> tuple[type, bool]:
    """(scalar type, is a list) of a field annotated ``int``, ``float``, ``str``, ``bool``, ``X | None`` or
    ``list[X]``. TypeError (a bug in the caller) for anything else: a dict or a nested config is no flag."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation) or (str,)
        if inner in SCALARS:
            return inner, True
    elif annotation is bool or annotation in SCALARS:
        return annotation, False
    raise TypeError(f"{cls.__name__}.{name}: a field of type {annotation!r} cannot be a command-line option")


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _shown(value: Any) -> str | None:
    """A default as help text shows it; None when there is nothing worth showing (None, "", [])."""
    if value is None or value == "" or value == [] or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _help(field: dataclasses.Field, option: Option, default_prefix: str) -> str:
    text = field.metadata.get("help", "")
    if option.invert:  # the flag turns the field off: say what it does, then what is turned off
        off = f"{field.name} off: {text}" if text else f"{field.name} off"
        return (f"{option.note} ({off})" if option.note else off).replace("%", "%%")
    if option.note:
        text = f"{text}; {option.note}" if text else option.note
    default = option.default if option.default is not None else _default_of(field)
    shown = _shown(default)
    if shown is not None and "default" not in field.metadata.get("help", "").lower():
        text += f" (default: {default_prefix}{shown})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_options(parser: argparse._ActionsContainer, cls: type,
                fields: Iterable[str] | None = None, *, exclude: Iterable[str] = (),
                options: Iterable[Option] = (), default_prefix: str = "") -> list[Option]:
    """Add one option per field of dataclass ``cls`` to ``parser`` (a parser or an argument group): the fields in
    ``fields`` (default: all of them, in order) less ``exclude``. ``options`` override how a field appears (see
    Option). ``default_prefix`` goes before each shown default (``"the preset's, else "``). Returns the options
    added, each with its flag; their argparse ``dest`` is the field name (see option_values)."""
    by_name = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)  # annotations resolved (``from __future__ import annotations`` makes strings)
    names = list(fields) if fields is not None else list(by_name)
    overrides = {option.field: option for option in options}
    unknown = sorted((set(overrides) | set(names)) - set(by_name))
    if unknown:
        raise TypeError(f"{cls.__name__}: no field {unknown[0]!r}")
    skipped = set(exclude)
    added = []
    for name in names:
        if name in skipped:
            continue
        field = by_name[name]
        option = overrides.get(name, Option(name))
        option = dataclasses.replace(option, flag=option.flag or flag_name(name))
        kind, is_list = _field_type(cls, name, hints[name])
        help_text = _help(field, option, default_prefix)
        common: dict[str, Any] = {"dest": name, "help": help_text, "default": option.default}
        if kind is bool and not is_list:
            if option.invert:
                parser.add_argument(option.flag, action="store_const", const=False, **common)
            else:
                parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, **common)
        else:
            convert = SCALARS[kind]
            if is_list and option.separator:
                sep = option.separator
                common["type"] = lambda text, sep=sep, convert=convert: [convert(part.strip())
                                                                         for part in text.split(sep) if part.strip()]
            else:
                common["type"] = convert
                if is_list:
                    common["action"] = "append"
            metavar = option.metavar or (None if option.choices else option.flag.lstrip("-").replace("-", "_").upper())
            parser.add_argument(option.flag, choices=option.choices, metavar=metavar, **common)
        added.append(option)
    return added


def field_names(cls: type, *, exclude: Iterable[str] = ()) -> list[str]:
    """The field names of dataclass ``cls``, in order, less ``exclude``."""
    skipped = set(exclude)
    return [field.name for field in dataclasses.fields(cls) if field.name not in skipped]


def option_values(args: argparse.Namespace, fields: Iterable[str | Option]) -> dict[str, Any]:
    """``{field: value}`` of the named fields (or options) that were given on the command line or have a command
    default; a field that has no option, or was not given, is left out (the preset or the dataclass decides)."""
    names = [item.field if isinstance(item, Option) else item for item in fields]
    values = {name: getattr(args, name, None) for name in names}
    return {name: value for name, value in values.items() if value is not None}
