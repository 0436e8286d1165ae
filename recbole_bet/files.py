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


@contextlib.contextmanager
def exclusive_lock(path, on_wait=None):
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; ``on_wait()`` is called
    first if another process holds it. Yields whether the lock is held: where there are no locks (no fcntl,
    an unwritable folder, a filesystem without them) the block runs unlocked. For work that is wasteful, not
    wrong, to do twice at once: the files themselves are written atomically either way."""
    try:
        import fcntl

        handle = open(path, "a")
    except (ImportError, OSError):
        handle = None
    held = False
    try:
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
                held = True
            except OSError:
                pass
        yield held
    finally:
        if handle is not None:
            handle.close()  # closing the file releases the lock
