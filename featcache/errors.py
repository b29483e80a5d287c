"""Exceptions raised by featcache.

Every error a user can cause derives from :class:`FeatcacheError`, so the CLI
can print its message and exit non-zero without a traceback.
"""


class FeatcacheError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class FeatcacheWarning(UserWarning):
    """Something the user should know that stops nothing (the CLI shows it as one line)."""


def is_integer(value) -> bool:
    """An int or a NumPy integer, never a bool: the one test of every integer setting."""
    from numbers import Integral

    return isinstance(value, Integral) and not isinstance(value, bool)


def check_integer(value, name: str, *, minimum: int = 1, error: type = None):
    """``value`` when it is an integer of at least ``minimum``; else ``error`` (FeatcacheError) naming ``name``.

    Examples:
        >>> check_integer(3, "batch_size")
        3
        >>> check_integer(0, "seed", minimum=0)
        0
    """
    if not (is_integer(value) and value >= minimum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise (error or FeatcacheError)(f"{name} must be {what}, got {value!r}")
    return value


class SourceError(FeatcacheError):
    """An image source (folder, CSV, array, named dataset) cannot be read."""


class DecodeError(FeatcacheError):
    """One image cannot be decoded. Extraction skips it and records the reason."""


class BackboneError(FeatcacheError):
    """A backbone name, weights file, layer or option is invalid."""


class CacheError(FeatcacheError):
    """A cache directory is missing, incomplete, corrupt or incompatible."""


class KeyMismatchError(CacheError):
    """The directory holds a cache made with different parameters."""

    def __init__(self, directory, differences):
        self.directory = directory
        self.differences = differences
        lines = [f"{directory} holds a cache made with different settings:"]
        for name, (old, new) in differences.items():
            lines.append(f"  {name}: cache has {_shown(old)}, this run asks for {_shown(new)}")
        lines.append("Use another --out directory, or pass --overwrite to replace it.")
        super().__init__("\n".join(lines))


def _shown(value) -> str:
    return "the default" if value is None else repr(value)  # a setting at its default is absent from the key


class LockedError(CacheError):
    """Another live process holds the cache directory's write lock."""


class ReadOnlyError(CacheError):
    """The cache directory cannot be written (read-only media, no permission)."""
