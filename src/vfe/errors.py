"""The user's problems as one exception family: the CLI prints them as one line and exits 2.

A `VfeError` says what is wrong with something the user gave (a file, an argument, a cache entry)
and what to do about it. Anything else escaping is a bug in vfe and keeps its traceback.
They subclass ValueError so code written against the earlier `ValueError`s keeps working.
"""
from __future__ import annotations


class VfeError(ValueError):
    """A problem with the user's input, files or settings; the message names it and the fix."""


class SettingsError(VfeError):
    """A flag, setting or head parameter that is unknown, of the wrong type or out of range."""


class DataError(VfeError):
    """A data set or image file that cannot be read as given."""


class CacheError(VfeError):
    """A feature-cache entry that is damaged, incomplete or locked."""


class PipelineFileError(VfeError):
    """A saved pipeline file whose header or tensors do not fit together."""
