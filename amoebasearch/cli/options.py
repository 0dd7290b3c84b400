"""Config dataclasses as flags: one argparse argument per field declared with
`amoebasearch.options.option`, and the dataclass built back from the parsed flags.

A verb adds its configs' flags with `add_options` and gets each config back with `build`; what it
declares itself is only what needs a check or a derived value (``--budget 30ms``, ``--json``).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields
from typing import Any, TypeVar

from amoebasearch.options import flag_name, flag_of

Config = TypeVar("Config")


def option_fields(config: type) -> list[Field]:
    """The fields of a config dataclass that are flags, in declaration order (base classes first)."""
    return [f for f in fields(config) if flag_of(f) is not None]


def field_default(config_field: Field) -> Any:
    if config_field.default_factory is not MISSING:
        return config_field.default_factory()
    return config_field.default


def flag_default(config_field: Field) -> Any:
    """What argparse stores when the flag is not given: None for an `unset` flag, else the field's default."""
    return None if flag_of(config_field).unset else field_default(config_field)


def add_option(container: Any, config_field: Field) -> None:
    """The argparse argument of one field, on a parser or an argument group."""
    flag, default = flag_of(config_field), field_default(config_field)
    kwargs: dict[str, Any] = {"dest": config_field.name, "help": flag.help}
    if flag.negatable:
        kwargs.update(action=argparse.BooleanOptionalAction, default=flag_default(config_field))
    elif isinstance(default, bool):
        kwargs.update(action="store_false" if default else "store_true", default=default)
    else:
        metavar = flag.metavar
        if metavar is None and flag.choices is None:  # what argparse shows for the flag's own name
            metavar = flag_name(config_field).lstrip("-").replace("-", "_").upper()
        kwargs.update(type=flag.type, choices=flag.choices, metavar=metavar, nargs=flag.nargs)
        if default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = flag_default(config_field)
    container.add_argument(flag_name(config_field), **kwargs)


def group_title(owner: type) -> str:
    """An argument group's title: the dataclass's docstring up to its first colon or the end of its
    first line ("Training data: which file, cut how." is "training data"), as argparse writes titles."""
    title = (owner.__doc__ or owner.__name__).strip().splitlines()[0].split(": ")[0].rstrip(".")
    return title[0].lower() + title[1:] if title[1:2].islower() else title


def add_options(parser: argparse.ArgumentParser, *configs: type) -> None:
    """One argument per flag field of each config, in a group per dataclass that declares some
    (a config built from group dataclasses, such as `FindRequest`, shows each group)."""
    for config in configs:
        groups: dict[type, list[Field]] = {}
        for config_field in option_fields(config):
            owner = next(c for c in config.__mro__ if config_field.name in c.__dict__.get("__annotations__", {}))
            groups.setdefault(owner, []).append(config_field)
        for owner, owned in groups.items():
            group = parser.add_argument_group(group_title(owner))
            for config_field in owned:
                add_option(group, config_field)


def build(config: type[Config], args: argparse.Namespace, **derived: Any) -> Config:
    """``config`` from the parsed flags, with ``derived`` (values the verb checked or computed, such as
    a parsed budget) over them. A flag that holds None (an `unset` one not given) keeps the field's default."""
    given = {f.name: getattr(args, f.name) for f in option_fields(config)}
    return config(**{name: value for name, value in given.items() if value is not None} | derived)


def given_flags(config: type, args: argparse.Namespace) -> list[str]:
    """The flags of ``config`` whose value differs from what argparse stores when they are not given."""
    return [flag_name(f) for f in option_fields(config) if getattr(args, f.name) != flag_default(f)]
