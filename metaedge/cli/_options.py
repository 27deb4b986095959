"""Command-line flags generated from the field metadata of ``TrainConfig`` / ``PretrainConfig`` / ``DataConfig``.

Every flag defaults to None ("not given"), so a resumed run or a stored data split keeps its values unless a
flag says otherwise; the help shows the field's real default. ``values_from_args`` turns the parsed flags
back into the given options only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any

from metaedge.train.options import cli_fields, field_default, value_type


_TYPE_METAVARS = {int: "N", float: "X"}


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def in_flag_terms(message: str, config_classes, command: str, assignments_only: bool = False) -> str:
    """A config error as the command line says it: each option's field name (``lr``, ``time_budget_s=``)
    becomes its flag (``--lr``, ``--time-budget``); names that are no flag of ``command`` stay as they are.
    ``assignments_only``: only ``name=value`` (for messages of any origin, where a bare word such as "data"
    may be plain English)."""
    flags = {f.name: flag_of(f) for cls in config_classes for f in cli_fields(cls, command)}
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    if assignments_only:
        return re.sub(r"(?<![\w.-])(" + names + r")=(True\b)?(?=\S)",
                      lambda m: flags[m.group(1)] + ("" if m.group(2) else " "), message)
    pattern = re.compile(r"(?<![\w.-])(" + names + r")=?(?![\w-])")
    return pattern.sub(lambda m: flags[m.group(1)], message)


def _default_text(f: dataclasses.Field) -> str | None:
    meta = f.metadata
    if meta.get("default_text"):
        return meta["default_text"]
    value = field_default(f)
    if value is None or value is False or value == {}:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def help_of(f: dataclasses.Field) -> str:
    text, default = f.metadata.get("help", ""), _default_text(f)
    text = f"{text} [{default}]".strip() if default is not None else text
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, cls, command: str,
                         groups: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add a flag for every field of ``cls`` that ``command`` exposes; ``groups`` (title -> argument group) is
    shared between calls so that fields of several classes can fill one help section."""
    groups = {} if groups is None else groups
    for f in cli_fields(cls, command):
        meta = f.metadata
        title = meta["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        g = groups[title]
        if meta.get("key_values"):
            g.add_argument(flag_of(f), dest=f.name, action="append", metavar="KEY=VALUE", default=None,
                           help=help_of(f) + " (KEY=VALUE, JSON values; repeatable)")
            for sc in meta["shortcuts"]:
                if command in sc.commands:
                    metavar = None if sc.choices else (sc.metavar or _TYPE_METAVARS.get(sc.type, sc.key.upper()))
                    g.add_argument(sc.flag or "--" + sc.key.replace("_", "-"), dest=f"{f.name}.{sc.key}", default=None,
                                   type=sc.type, choices=sc.choices, help=sc.help_text().replace("%", "%%"),
                                   metavar=metavar)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_of(f)}
        kind = value_type(cls, f)
        if kind is bool:
            kwargs["action"] = "store_true" if field_default(f) is False else argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta.get("parse") or (kind if kind in (int, float, str) else None)
            for key in ("choices", "metavar", "nargs"):
                if meta.get(key) is not None:
                    kwargs[key] = meta[key]
            if "metavar" not in kwargs and "choices" not in kwargs and kind in (int, float):
                kwargs["metavar"] = _TYPE_METAVARS[kind]
        g.add_argument(flag_of(f), **kwargs)
    return groups


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """['hidden=32', 'widths=[64,128]'] -> {'hidden': 32, 'widths': [64, 128]} (JSON values, else strings)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag}: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


def values_from_args(args: argparse.Namespace, cls, command: str) -> dict[str, Any]:
    """The options of ``cls`` that were given on the command line (flags left out are not in the dict)."""
    out: dict[str, Any] = {}
    for f in cli_fields(cls, command):
        if f.metadata.get("key_values"):
            values = parse_key_values(getattr(args, f.name, None), flag_of(f))
            for sc in f.metadata["shortcuts"]:
                value = getattr(args, f"{f.name}.{sc.key}", None)
                if value is not None:
                    values[sc.key] = value
            if values:
                out[f.name] = values
            continue
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
