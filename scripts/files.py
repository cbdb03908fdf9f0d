"""Atomic file writes: a reader of the path gets the old file or the new one, never a part of either."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any], remove_stale: bool = False) -> None:
    """Call ``write`` on a hidden temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A rename within one file system is atomic on POSIX and Windows. The temporary name carries the process id, so
    processes that write the same path at once (the ranks of a torchrun job) never rename each other's file.
    ``remove_stale`` first deletes the temporary files that killed writes left behind. Use it only where a single
    process writes the path, because it would delete another writer's file in flight.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, remove_stale: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`, which explains ``remove_stale``."""
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")), remove_stale=remove_stale)
