"""Writes that a crash cannot leave half done: the one place sigrl replaces files and folders.

A file is written to a temporary file in the same folder, flushed to disk and renamed over the old one
(:func:`atomic_file`), so readers see the old file or the new one, never part of either. A set of files
(two engines, two plans and their record) or a whole folder (a model repository, manifests) is built in a
staging folder beside its target and moved into place only once everything in it was written
(:func:`staged_files`, :func:`staged_folder`); on any error the staging folder goes and the target stays
as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """An open file whose content replaces ``path`` (creating its folder) when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) through :func:`atomic_file`."""
    with atomic_file(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def staged_files(folder: str | Path) -> Iterator[Path]:
    """A staging folder inside ``folder``: every file written there moves into ``folder`` (replacing files of
    the same name, leaving the others) when the block ends without error."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_folder(out: str | Path, mode: int = 0o755) -> Iterator[Path]:
    """A staging folder beside ``out`` that becomes ``out`` (with ``mode``) when the block ends without error;
    an existing ``out`` is renamed away first and then removed, so ``out`` is never half old, half new."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, mode)  # mkdtemp made it private
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)  # ``old`` is an empty folder: replacing it is allowed
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)  # onto nothing or an empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
