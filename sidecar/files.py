"""Reading files other programs wrote (metrics.json, shard indexes) without letting them stop us.

Only a regular file is read, and only up to a size cap: a FIFO would block the loop for ever, a
symlink to /dev/zero would fill memory. The open never blocks (O_NONBLOCK) and the type is
checked on the opened descriptor, so a file swapped for a FIFO between a check and the open is
refused too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileProblem(Exception):
    """The file exists but is not something we read (reason in `args[0]`)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def read_capped(path: Path, max_bytes: int) -> str:
    """The text of a regular file of at most `max_bytes` (invalid UTF-8 replaced).

    Raises FileNotFoundError / OSError as `open` does, and FileProblem for anything that is not
    a regular file or is larger than the cap."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(f"is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise FileProblem(f"is {info.st_size:,} bytes, larger than the {max_bytes:,} bytes read")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew while being read
            raise FileProblem(f"grew beyond the {max_bytes:,} bytes read")
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def not_regular(path: Path) -> str | None:
    """Why an existing `path` is not a regular file to read (following symlinks), or None if it is
    one or does not exist. Never opens it, so a FIFO cannot block."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(info.st_mode) else f"is {_kind(info.st_mode)}, not a regular file"
