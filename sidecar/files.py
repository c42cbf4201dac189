"""Files shared with other programs: reading what they wrote (metrics.json, shard indexes) without
letting them stop us, writing what they read atomically, names that are valid text.

Only a regular file is read, and only up to a size cap: a FIFO would block the loop for ever, a
symlink to /dev/zero would fill memory. The open never blocks (O_NONBLOCK) and the type is
checked on the opened descriptor, so a file swapped for a FIFO between a check and the open is
refused too. What other processes read (the state, records beside metrics.json) is written to a
temp file in the same folder, flushed, fsynced and `os.replace`d.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from .crash import crash_point


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


def clean_name(name: str) -> str:
    """Text that is valid UTF-8: a lone surrogate (JSON `"\\ud800"` in a metric name, a path's
    non-UTF-8 byte) cannot be sent to W&B, so it is kept as its escape, `\\ud800`."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import, before any thread exists


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, keep_backup: bool = False, before_replace=None) -> None:
    """Write `text` to a new temp file beside `path`, fsync it and replace `path` with it.

    With `keep_backup`, the file being replaced stays as `<path>.bak` (a hard link, so no copy;
    a copy where links are not supported). Temp names are unique and created exclusively, so a
    leftover of a killed writer is never written through. `before_replace()` runs when the text is
    on disk, right before anything is replaced: whatever it raises leaves `path` (and its backup)
    unchanged. Raises OSError; `path` is then unchanged.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    bak_tmp = None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; state files follow the user's umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        crash_point("state-write")  # the new text is on disk beside the state, not yet in place
        if before_replace is not None:
            before_replace()
        if keep_backup and path.exists():
            bak_tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.bak.tmp")
            try:
                os.link(path, bak_tmp)
            except FileExistsError:
                raise
            except OSError:
                copy_fd, copy_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".bak.tmp")
                bak_tmp = Path(copy_name)
                with os.fdopen(copy_fd, "wb") as fh:
                    fh.write(path.read_bytes())
            os.replace(bak_tmp, Path(f"{path}.bak"))
            bak_tmp = None
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, bak_tmp):
            if leftover is not None:
                try:
                    leftover.unlink()
                except OSError:
                    pass
        raise
    _fsync_dir(path.parent)
