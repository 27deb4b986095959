"""Field metadata for configuration dataclasses: the one place an option's default, help, flag and choices live.

``TrainConfig``, ``PretrainConfig`` and ``DataConfig`` declare their fields with ``option(...)``; the command
line (``metaedge.cli._options``) is generated from that metadata, and ``docs/cli.md`` from the command line, so
a default or a help text is written once. A new training option (a distillation teacher, a pruning ratio) is
one ``option(...)`` line in a config class: it gets its flag, help, stored config entry and resume rule.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

ALL_COMMANDS = ("train", "pretrain")


@dataclass(frozen=True)
class Shortcut:
    """A flag that sets one key of a dict-valued option (``--inner-steps 3`` -> ``method_options["inner_steps"]``).

    ``defaults``: ``{owner: default}`` as the owners' constructors define it (shown in the help; a test checks
    them against the constructors); ``default_text`` replaces them in the help."""
    key: str
    help: str
    type: Callable | None = None
    choices: Sequence | None = None
    flag: str | None = None
    commands: Sequence[str] = ALL_COMMANDS
    defaults: dict = field(default_factory=dict)
    default_text: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return (self.flag or "--" + self.key.replace("_", "-")).lstrip("-").replace("-", "_")

    def help_text(self) -> str:
        if self.default_text:
            return f"{self.help} [{self.default_text}]"
        values = list(self.defaults.values())
        if not values:
            return self.help
        if all(v == values[0] for v in values):
            return f"{self.help} [{values[0]}]"
        return f"{self.help} [" + ", ".join(f"{k} {v}" for k, v in self.defaults.items()) + "]"


def option(default: Any = dataclasses.MISSING, help: str = "", *, group: str, flag: str | None = None,
           choices: Sequence | None = None, parse: Callable | None = None, metavar: str | None = None,
           nargs: Any = None, resumable: bool = False, commands: Sequence[str] = ALL_COMMANDS,
           default_text: str | None = None, factory: Callable | None = None,
           shortcuts: Sequence[Shortcut] = (), key_values: bool = False) -> Any:
    """A dataclass field carrying its command-line description.

    ``group``: the help section; ``flag``: default ``--<name-with-dashes>``; ``parse``: argparse ``type`` (default:
    from the annotation); ``resumable``: may change when a run is resumed; ``commands``: where the flag exists;
    ``default_text``: how the default reads in the help (default: the value); ``key_values``: a dict filled by
    repeated ``KEY=VALUE`` flags, with ``shortcuts`` for its common keys.
    """
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "parse": parse, "metavar": metavar,
            "nargs": nargs, "resumable": resumable, "commands": tuple(commands), "default_text": default_text,
            "shortcuts": tuple(shortcuts), "key_values": key_values}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def cli_fields(cls, command: str) -> list[dataclasses.Field]:
    """Fields of ``cls`` that ``command`` exposes as flags, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("group") and command in f.metadata["commands"]]


def resumable_fields(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def value_type(cls, f: dataclasses.Field):
    """The scalar type of a field's annotation (``int | None`` -> ``int``; lists -> their item type)."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence):
        return args[0] if args else str
    if args and origin is not None and origin not in (list, tuple, dict):
        hint = args[0]
        if typing.get_origin(hint) in (list, tuple):
            inner = typing.get_args(hint)
            return inner[0] if inner else str
    return hint


def from_dict(cls, d: dict[str, Any], what: str):
    """``cls(**d)`` with unknown keys named in the error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {what} option(s): {sorted(unknown)}")
    return cls(**d)


def check_unchanged(cls, stored: dict[str, Any], new: dict[str, Any], what: str) -> None:
    """The resume rule: every option of ``cls`` that is not ``resumable`` keeps its stored value."""
    allowed = resumable_fields(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    changed = [n for n in names if n not in allowed and n in stored and n in new and stored[n] != new[n]]
    if changed:
        raise ValueError(f"{what}: these options cannot change in a resumed run: "
                         + ", ".join(f"{n}: {stored[n]!r} -> {new[n]!r}" for n in changed)
                         + f" (only {', '.join(sorted(allowed)) or 'none'} may)")
