"""Writing files so that a reader (or a resumed run) never sees half of one."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", suffix: str = ".tmp", encoding: str | None = None):
    """Open a temporary file beside ``path`` for writing and move it onto ``path`` when the block ends
    without an error: a kill at any moment leaves either the old file or the new one whole. The file gets
    the mode a plain ``open()`` would (mkstemp's is 0600). Yields the open file object."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory)
    try:
        newline = "\n" if "b" not in mode else None
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None, newline=newline) as fh:
            yield fh
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
