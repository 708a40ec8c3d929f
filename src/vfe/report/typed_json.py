"""JSON Schema from Python type annotations: TypedDicts, JSON's own types, list, dict[str, ...], Literal, unions,
and Annotated notes (a string describes a value, `Keys` the keys of a mapping). Small and exact for what
vfe.report.schema needs, where a library such as pydantic would be a heavy dependency for one file.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class Keys:
    """What the keys of a mapping are: the schema's description of it, and a pattern they follow."""

    meaning: str
    pattern: str | None = None


def json_schema_of(root, title: str) -> dict:
    """The JSON Schema (draft 2020-12) of the TypedDict `root`, closed (no key it does not declare), every other
    record once under "$defs" and open (a reader of them ignores keys it does not know)."""
    defs: dict[str, dict] = {}
    schema = _record(root, defs)
    schema["additionalProperties"] = False
    return {"$schema": DRAFT, "title": title, **schema, "$defs": dict(sorted(defs.items()))}


def _record(cls, defs: dict) -> dict:
    hints = get_type_hints(cls, include_extras=True)
    out: dict = {"type": "object"}
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    out["properties"] = {name: _schema(_unwrap(tp), defs) for name, tp in hints.items()}
    out["required"] = [name for name in hints if name in cls.__required_keys__]
    return out


def _unwrap(tp):
    """The type inside NotRequired[...] / Required[...] (which `__required_keys__` has already read)."""
    return get_args(tp)[0] if get_origin(tp) in (NotRequired, Required) else tp


def _schema(tp, defs: dict) -> dict:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        out = dict(_schema(args[0], defs))
        for note in tp.__metadata__:
            if isinstance(note, Keys):
                out["description"] = f"keyed by {note.meaning}"
                if note.pattern:
                    out["propertyNames"] = {"pattern": note.pattern}
            else:
                out["description"] = note
        return out
    if tp is Any:
        return {}
    if tp in JSON_TYPES:
        return {"type": JSON_TYPES[tp]}
    if is_typeddict(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # claimed before its fields, which may name it again
            defs[tp.__name__] = _record(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if origin is Literal:
        return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    if origin in (Union, types.UnionType):
        members = [_schema(a, defs) for a in args]
        if all(set(m) == {"type"} for m in members):
            return {"type": [m["type"] for m in members]}
        return {"anyOf": members}
    if origin is list:
        return {"type": "array", "items": _schema(args[0], defs)}
    if origin is dict and args[0] is str:
        values = _schema(args[1], defs)
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    raise TypeError(f"no JSON Schema for {tp!r}: use JSON types, list, dict[str, ...], TypedDicts and Literal")
