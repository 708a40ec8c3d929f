"""results.json checked against its schema (vfe.report.schema) on both sides of the file.

`vfe run` checks what it is about to write (`check_written`): a mismatch is a bug in vfe and names the field. A
reader checks what it read (`check_readable`): a file of another schema version, or one that does not follow this
one, is one line saying which and what to do, not a KeyError deep in the report. The check takes about 0.2 s
on a full-size file (720 kB; the training histories, shaped by each head, are not checked field by field).
"""
from __future__ import annotations

import json
import os
from functools import cache

from vfe.errors import VfeError
from vfe.report.schema import SCHEMA_VERSION, json_schema

RERUN = "rerun it with this vfe (vfe run ... --overwrite) to report it"


class ResultsFileError(VfeError):
    """A results.json this vfe cannot read: of another schema version, or not following its own."""


class ResultsSchemaBug(RuntimeError):
    """`vfe run` was about to write a results.json that does not follow the schema: a bug in vfe, not the user's."""


@cache
def _validator():
    from jsonschema import Draft202012Validator  # ~0.1 s to import: only when a file is checked

    return Draft202012Validator(json_schema())


def first_error(results) -> str | None:
    """Where `results` first departs from the schema and how ("$.clean.vfe['0'].accuracy: expected number, found
    string"), or None when it follows it."""
    from jsonschema.exceptions import best_match

    validator = _validator()
    if validator.is_valid(results):
        return None
    error = best_match(validator.iter_errors(results))
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, str) else \
            " or ".join(error.validator_value)
        what = f"expected {expected}, found {_json_type(error.instance)}"
    else:
        what = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{error.json_path}: {what}"


def _json_type(value) -> str:
    """The JSON type name of a parsed value (bool before int: a bool is an int in Python)."""
    kinds = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
             (dict, "object"), (type(None), "null"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def check_readable(results, source: str) -> None:
    """ResultsFileError (one line, starting with `source`) unless `results` is a results.json of this schema
    version that follows it."""
    if not isinstance(results, dict):
        raise ResultsFileError(f"{source}: not a results.json (its top level is not a JSON object); give the "
                               "results.json of a finished `vfe run`")
    version = results.get("schema_version", 0)  # a file from before the schema has none: version 0
    if isinstance(version, bool) or not isinstance(version, int):
        raise ResultsFileError(f"{source}: its schema_version {json.dumps(version)} is not a version number; {RERUN}")
    if version < SCHEMA_VERSION:
        raise ResultsFileError(f"{source}: results schema version {version} (written by an older vfe; this vfe reads "
                               f"version {SCHEMA_VERSION}); {RERUN}")
    if version > SCHEMA_VERSION:
        raise ResultsFileError(f"{source}: results schema version {version} (written by a newer vfe; this vfe reads "
                               f"version {SCHEMA_VERSION}); report it with the vfe that wrote it, or rerun it with "
                               "this one")
    error = first_error(results)
    if error is not None:
        raise ResultsFileError(f"{source}: does not follow results schema version {SCHEMA_VERSION} at {error}; "
                               f"{RERUN}")


def check_written(results: dict) -> dict:
    """`results` as results.json will hold them (numpy numbers as numbers, tuples as lists), after checking them
    against the schema: ResultsSchemaBug, naming the field, when they do not follow it."""
    written = json.loads(json.dumps(results, default=_plain, allow_nan=True))
    error = first_error(written)
    if error is not None:
        raise ResultsSchemaBug(f"results.json does not follow its schema (version {SCHEMA_VERSION}) at {error}: a "
                               "bug in vfe; the stage writing that field and vfe/report/schema.py disagree")
    return written


def _plain(value):
    """What vfe.io.write_json writes for numpy values and paths, which JSON has no type for."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
