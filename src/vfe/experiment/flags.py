"""Command-line flags generated from settings dataclasses (nanoGPT's configurator, typed).

Each field becomes `--field-name`, typed from its annotation: `int`/`float`/`str` (with `none` for an
optional value), `list[...]` (several values; an optional list also takes none), `bool`
(`--ood` / `--no-ood`), and the per-head parameter dict as `--head-param HEAD.KEY=VALUE`. A nested
dataclass becomes a titled group of flags. Only the flags given override the base settings, so
`vfe run --quick --n-train 500` changes one field of the quick settings. Unknown flags and values of
the wrong type are refused by argparse before any work, with the closest valid flag suggested.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing

from vfe.errors import SettingsError

HEAD_PARAM_FLAG = "--head-param"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that suggests the closest valid flag for a mistyped one, and never abbreviates."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        """As argparse, but an unknown flag is reported by the sub-command that got it, with its flags."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            getattr(parsed, "command_parser", self).error("unrecognized arguments: " + " ".join(extras))
        return parsed

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            known = [s for a in self._actions for s in a.option_strings]
            hints = [difflib.get_close_matches(w.split("=")[0], known, n=1)
                     for w in message.split(":", 1)[1].split() if w.startswith("-")]
            hints = sorted({h[0] for h in hints if h})
            if hints:
                message += f" (did you mean {', '.join(hints)}?)"
            message += f"; `{self.prog} --help` lists every flag"
        super().error(message)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _none_or(convert):
    def parse(text: str):
        return None if text.lower() == "none" else convert(text)
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _unwrap_optional(tp) -> tuple[object, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def add_flags(parser: argparse.ArgumentParser, settings) -> None:
    """Add a flag for every field of the dataclass instance `settings` (nested ones as groups)."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            doc = (type(value).__doc__ or "").strip().splitlines()[0]
            add_flags(parser.add_argument_group(f"{f.name} settings", doc), value)
            continue
        _add_one(parser, f, hints[f.name], value)


def _add_one(parser, f: dataclasses.Field, tp, default) -> None:
    help_ = f.metadata.get("help", "")
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    common = {"dest": f.name, "default": argparse.SUPPRESS, "required": f.metadata.get("required", False)}
    if tp is bool:
        parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction,
                            help=f"{help_} (default: {'on' if default else 'off'})", **common)
    elif origin is dict:
        parser.add_argument(HEAD_PARAM_FLAG, action="append", metavar="HEAD.KEY=VALUE",
                            help=f"{help_}; default: {_show(default)}", **common)
    elif origin is list:
        (item,) = typing.get_args(tp)
        parser.add_argument(flag(f.name), nargs="*" if optional else "+", type=item,
                            metavar=item.__name__.upper(), help=f"{help_} (default: {_show(default)})", **common)
    else:
        convert = _none_or(tp) if optional else tp
        shown = "" if common["required"] else f" (default: {_show(default)})"
        if "choices" in f.metadata:
            common["choices"] = f.metadata["choices"]
        parser.add_argument(flag(f.name), type=convert, metavar=tp.__name__.upper(), help=help_ + shown, **common)


def _show(value) -> str:
    if isinstance(value, list):
        return " ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) or "none"
    if isinstance(value, dict):
        return " ".join(f"{h}.{k}={v}" for h, p in value.items() for k, v in p.items()) or "none"
    return "none" if value is None else str(value)


def apply_flags(settings, args: argparse.Namespace):
    """A copy of `settings` with the fields whose flags were given in `args` replaced."""
    given = vars(args)
    changes = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = apply_flags(value, args)
        elif f.name in given:
            new = given[f.name]
            changes[f.name] = merge_head_params(value, new) if isinstance(value, dict) else new
    return dataclasses.replace(settings, **changes)


def merge_head_params(base: dict[str, dict], pairs: list[str]) -> dict[str, dict]:
    """`base` updated with HEAD.KEY=VALUE pairs (JSON values; plain text stays a string)."""
    out = {head: dict(params) for head, params in base.items()}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        head, dot, key = name.partition(".")
        if not sep or not dot or not head or not key:
            raise SettingsError(f"{HEAD_PARAM_FLAG} expects HEAD.KEY=VALUE (e.g. vfe.vae_epochs=300), got {pair!r}")
        out.setdefault(head, {})[key] = parse_value(text)
    return out


def parse_value(text: str):
    """A parameter value as JSON (numbers, true/false, null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
