"""The data layer's errors that are not about one file format: all VfeErrors, so the CLI prints one line.

The format-specific ones live beside their readers (IdxFormatError, CifarFormatError,
UnreadableImageError); each is a DataError too.
"""
from __future__ import annotations

from vfe.errors import DataError


class MissingDataError(DataError, FileNotFoundError):
    """A data set, folder or file that is not where it was looked for (still a FileNotFoundError)."""


class MissingSplitError(DataError):
    """The data set has no split of that name (an image folder without split folders has only 'train')."""
