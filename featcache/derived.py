"""Derived cache entries under ``$FEATCACHE_HOME``: files featcache made from others, checked before each use.

An entry is a few files of fixed names in one folder (the OpenVINO IR of a
graph, the Keras weights converted from a ``.pth``) plus a sidecar record:
JSON with the sha256 of each file and whatever else the maker keeps (the
IR's probe outputs, the source's sha256), written after the files, atomically.
Before use the files are hashed against the record; an entry without a
record, or with any byte different, is not used: the record and the entry's
own files (only the names it declares) are removed, one line says so
(a :class:`~featcache.errors.FeatcacheWarning`), and the caller rebuilds it.

The record guards against damage (a bad disk, a half copy, a stray write),
not against someone who can rewrite both the files and the record; the
OpenVINO runtime's probe batch (featcache/runtimes.py) checks the result too.

A leaf module: it imports only featcache.errors and featcache.files.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .errors import FeatcacheWarning
from .files import atomic_write_bytes, sha256_path

#: the record's format; a record of another format is an entry to rebuild
FORMAT = 1


class Entry:
    """One derived cache entry: ``names`` in ``folder``, and the record ``record`` beside them.

    Args:
        folder: the folder holding the entry's files.
        names: the file names the entry consists of (featcache's own names).
        record: the sidecar record's file name, in ``folder``.
        what: how the one-line notice names the entry (``"the cached OpenVINO IR"``).

    Examples:
        >>> entry = Entry(Path("/tmp/h/weights"), ["m.weights.h5"], "m.weights.h5.record.json")  # doctest: +SKIP
        >>> record, reason = entry.check()  # doctest: +SKIP
    """

    def __init__(self, folder, names, record: str = "record.json", what: str = "the cache entry"):
        self.folder, self.names, self.what = Path(folder), tuple(names), what
        self.record_path = self.folder / record

    def paths(self) -> list[Path]:
        return [self.folder / n for n in self.names]

    def exists(self) -> bool:
        """Whether any of the entry's files or its record is there."""
        return any(os.path.lexists(p) for p in [*self.paths(), self.record_path])

    def check(self) -> tuple[dict | None, str | None]:
        """``(record, None)`` when every file matches the record; ``(None, why)`` when it is damaged;
        ``(None, None)`` when there is no entry at all."""
        if not self.exists():
            return None, None
        try:
            record = json.loads(self.record_path.read_text())
            recorded = record["files"]
            if record.get("format") != FORMAT or sorted(recorded) != sorted(self.names):
                return None, "its record is not this version's"
        except FileNotFoundError:
            return None, "it has no record of its sha256s"
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None, "its record is unreadable"
        for path in self.paths():
            if path.is_symlink() or not path.is_file():
                return None, f"{path.name} is missing or not a plain file"
            try:
                digest = sha256_path(path)
            except OSError as exc:
                return None, f"{path.name} cannot be read ({exc.strerror})"
            if digest != recorded[path.name]:
                return None, f"{path.name} has sha256 {digest[:12]}…, its record says {str(recorded[path.name])[:12]}…"
        return record, None

    def seal(self, extra: dict | None = None) -> None:
        """Write the record of the files as they are now: the last step of making the entry."""
        record = {"format": FORMAT, "files": {p.name: sha256_path(p) for p in self.paths()}, **(extra or {})}
        atomic_write_bytes(self.record_path, json.dumps(record, sort_keys=True).encode())

    def discard(self, reason: str | None = None, action: str = "rebuilding it") -> None:
        """Remove the record, then the entry's own files (never anything else); say why in one line."""
        if reason:
            where = self.paths()[0] if len(self.names) == 1 else self.folder
            warnings.warn(f"{self.what} {where} is damaged ({reason}); {action}", FeatcacheWarning,
                          stacklevel=2)
        for path in [self.record_path, *self.paths()]:  # the record first: a kill here leaves an entry without one
            try:
                path.unlink()
            except FileNotFoundError:
                pass
