"""The directory lock: one writer per cache directory, and what featcache's ``.lock`` file holds."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import time
from pathlib import Path

from ..errors import CacheError, LockedError, ReadOnlyError
from .layout import LOCK


_LOCK_TEXT = re.compile(rb"^(pid \d+ on [^\n]*\n?)?$")


def _is_lock_text(data: bytes) -> bool:
    """What featcache writes in ``.lock`` (or nothing: a lock file whose writer died before writing)."""
    return bool(_LOCK_TEXT.match(data))


def is_our_lock(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return _is_lock_text(path.read_bytes()[:256])
    except OSError:
        return False


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/.lock``: one writer per cache directory.

    The kernel drops the lock when its process dies, SIGKILL included, so a
    lock file left by a killed run is stale by construction and is taken over.
    """

    def __init__(self, directory: Path, *, wait: float = 0.0):
        self.path = Path(directory) / LOCK
        self.wait = wait
        self._fd: int | None = None
        #: whether this lock made the lock file (a run that claims nothing removes it again)
        self.created = False

    def _open(self) -> int:
        """The lock file, opened without following a link, and only if it is featcache's (or new)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not os.path.lexists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyError(f"{self.path.parent} is read-only ({exc.strerror})") from None
            if exc.errno == errno.ELOOP:
                raise CacheError(f"{self.path} is a symbolic link; featcache never writes through one: "
                                 "move it away") from None
            raise CacheError(f"cannot open the lock file {self.path}: {exc.strerror or exc}") from None
        if not self.created and not _is_lock_text(os.pread(fd, 256, 0)):
            os.close(fd)
            raise CacheError(f"{self.path} is not featcache's lock file, and featcache never overwrites what it "
                             "did not write: move it away or choose another --out")
        return fd

    def acquire(self) -> "DirectoryLock":
        fd = self._open()
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                # the holder removed the file after claiming nothing: lock the file that is there now
                os.close(fd)
                fd = self._open()
                continue
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                    os.close(fd)
                    raise LockedError(f"another featcache process ({holder}) is writing {self.path.parent}; "
                                      "wait for it to finish (or pass --wait SECONDS)") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self, *, remove: bool = False) -> None:
        """Unlock; ``remove=True`` also deletes the lock file if this lock created it (nothing was claimed)."""
        if self._fd is not None:
            if remove and self.created:
                self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
