"""Writing files safely: atomic replacement, whole-directory commits, hashing, spreadsheet-safe cells.

A leaf utility that every layer may use; it imports nothing of featcache's.
The rules it implements are featcache's promises about the user's disk:

* a file is replaced atomically (temporary name, flush, fsync, rename, fsync
  of the directory), so a reader or a kill sees the old bytes or the new;
* a directory of several files (a model directory) is staged beside its
  final name and swapped in with one rename, so a kill leaves the old
  directory or the new one, never a mix;
* temporaries carry names only featcache makes (``.NAME.tmp-PID``) and are
  cleaned only when they provably are featcache's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable


def pause_point(name: str) -> None:
    """Fault-injection point for the kill tests: with ``FEATCACHE_PAUSE_AT=name`` the
    process announces itself (``FEATCACHE_PAUSE_FILE``) and waits here to be killed.

    Lets a test SIGKILL a run at an exact moment (a shard's temporary file written
    but not renamed, a manifest half way, a model directory before its swap); a
    no-op otherwise.
    """
    if os.environ.get("FEATCACHE_PAUSE_AT") != name:
        return
    marker = os.environ.get("FEATCACHE_PAUSE_FILE")
    if marker:
        Path(marker).write_text(f"{name} {os.getpid()}\n")
    time.sleep(float(os.environ.get("FEATCACHE_PAUSE_SECONDS", "60")))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """The hidden sibling a writer of ``path`` uses until it commits: ``.NAME.tmp-PID``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; a kill leaves the old file or the new one."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        pause_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_save(path: Path, save: Callable[[Path], None], suffix: str) -> None:
    """Replace ``path`` with what ``save(tmp)`` writes, in one step (for writers that need a file
    name ending in ``suffix``, such as Keras' ``.keras`` and ``.weights.h5``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name[:-len(suffix)]}.tmp-{os.getpid()}{suffix}")
    try:
        save(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def sha256_path(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- directories

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        fn = ctypes.CDLL(libc_name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def commit_directory(staged: Path, final: Path) -> None:
    """Make the fully written directory ``staged`` appear at ``final`` in one step.

    ``final`` must be absent or a directory the caller has proven to be
    featcache's: where it exists, the two are exchanged atomically and the old
    one (now at ``staged``) is removed. A kill at any moment leaves the old
    directory or the new one at ``final``, plus at most a hidden
    ``.NAME.tmp-PID`` sibling that :func:`remove_stale_siblings` cleans.
    """
    fsync_dir(staged)
    pause_point(f"before-swap:{final.name}")
    if not final.exists():
        os.rename(staged, final)
    elif exchange(staged, final):
        pause_point(f"after-swap:{final.name}")
        shutil.rmtree(staged)
    else:  # no atomic exchange on this file system: the shortest window featcache can give
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old)
    fsync_dir(final.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_siblings(final: Path, is_ours: Callable[[Path], bool]) -> list[Path]:
    """Remove the hidden staging siblings of ``final`` left by killed writers.

    Only ``.NAME.tmp-PID`` / ``.NAME.old-PID`` whose process is gone and that
    ``is_ours`` accepts; anything else is left alone. Where a kill fell in the
    two-rename fallback of :func:`commit_directory` (``final`` missing, the
    old directory at ``.NAME.old-PID``), the old directory is put back first.
    Returns what was removed.
    """
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(\d+)$")
    removed = []
    if not final.parent.is_dir():
        return removed
    stale = []
    for p in sorted(final.parent.iterdir()):
        m = pattern.match(p.name)
        if not m or p.is_symlink() or not p.is_dir() or _pid_alive(int(m.group(2))) and int(m.group(2)) != os.getpid():
            continue
        if is_ours(p):
            stale.append((m.group(1), p))
    if not os.path.lexists(final):
        for kind, p in stale:
            if kind == "old":
                os.rename(p, final)  # the old directory comes back where it was
                stale.remove((kind, p))
                break
    for _kind, p in stale:
        shutil.rmtree(p)
        removed.append(p)
    return removed


def remove_stale_temporaries(path: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Remove the temporary files killed writers of ``path`` left beside it; returns what was removed.

    Only our own naming, ``.NAME.tmp-PID`` (:func:`atomic_write_bytes`) and
    ``.STEM.tmp-PID.SUFFIX`` (:func:`atomic_save`, for ``path``'s suffix and
    ``suffixes``), only regular files, and only where process PID is gone.
    """
    path = Path(path)
    stem = path.name[:-len(path.suffix)] if path.suffix else path.name
    ends = "|".join(re.escape(s) for s in {path.suffix, *suffixes} if s)
    pattern = re.compile(rf"^\.(?:{re.escape(path.name)}\.tmp-(\d+)|{re.escape(stem)}\.tmp-(\d+)(?:{ends}))$"
                         if ends else rf"^\.{re.escape(path.name)}\.tmp-(\d+)()$")
    removed = []
    try:
        entries = sorted(path.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if not m or p.is_symlink() or not p.is_file():
            continue
        pid = int(m.group(1) or m.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # a writer still at work
        try:
            p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


# --------------------------------------------------------------------------- tables for people

#: what a spreadsheet reads as the start of a formula (OWASP, CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A CSV cell that a spreadsheet shows as text: a string starting like a formula gets a leading quote.

    OWASP's advice against CSV injection; numbers stay numbers.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
