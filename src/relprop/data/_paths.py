"""Where a data set lives: an explicit ``root``, else ``$RELPROP_DATA/<folder>``; a clear error otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from .base import CorruptSampleError, DatasetNotFoundError

__all__ = ["DATA_ENV", "confined", "missing", "resolve_root"]

#: Environment variable naming a folder that holds the data sets, one sub-folder each.
DATA_ENV = "RELPROP_DATA"


def resolve_root(root: str | os.PathLike[str] | None, name: str, folder: str, how_to_get: str) -> Path:
    """The folder of data set ``name``.

    ``root`` wins; without it ``$RELPROP_DATA/<folder>`` is used. A folder that does not exist raises
    :class:`DatasetNotFoundError` naming where the data is expected and ``how_to_get`` it.
    """
    if root is not None:
        path = Path(root).expanduser()
        where = str(path)
    elif os.environ.get(DATA_ENV):
        path = Path(os.environ[DATA_ENV]).expanduser() / folder
        where = f"{path} (from ${DATA_ENV})"
    else:
        raise DatasetNotFoundError(
            f"data set {name!r}: no location given; pass root=... or set ${DATA_ENV} to a folder holding "
            f"{folder!r}. {how_to_get}")
    if not path.is_dir():
        raise DatasetNotFoundError(f"data set {name!r} not found: expected it at {where}. {how_to_get}")
    return path


def missing(name: str, what: str, where: Path, how_to_get: str) -> DatasetNotFoundError:
    """The error for a data set whose folder exists but lacks ``what`` (looked for at ``where``)."""
    return DatasetNotFoundError(f"data set {name!r}: {what} not found at {where}. {how_to_get}")


def confined(folder: Path, relative: str, source: str | os.PathLike[str]) -> Path:
    """``folder / relative`` for a path read from the file ``source`` (a split list, an annotation).

    A path that leaves ``folder`` (``..`` climbing out, an absolute path) raises :class:`CorruptSampleError`
    naming ``source``: a data set reads only files inside its own folder. The check is made on the
    normalised path without following symbolic links, so data sets whose sub-folders are links to other
    disks still load.
    """
    base = Path(os.path.normpath(os.path.abspath(folder)))
    path = Path(os.path.normpath(base / relative))
    if "\x00" in relative or not path.is_relative_to(base) or path == base:
        raise CorruptSampleError(str(source), f"path {relative!r} lies outside the data set folder {folder}")
    return folder / relative
