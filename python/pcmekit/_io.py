"""One atomic file write, for checkpoints (``pcmekit.train``) and index files (``pcmekit.retrieval``)."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write"]


def atomic_write(path: Union[str, "os.PathLike[str]"], write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(f)`` on a temporary file in ``path``'s directory, flushes it to disk and
    renames it over ``path`` (``os.replace``, atomic on POSIX and Windows): a crash leaves the
    old file or the new one, never a torn one. The file gets the mode a plain ``open`` would give
    it (an existing file's mode is kept), and on POSIX the rename itself is made durable."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file as 0600; give it the mode a plain open() would have.
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
