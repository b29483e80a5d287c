"""Quiet by default: TensorFlow's, absl's and CUDA's start-up chatter kept off stderr (``--verbose`` shows it).

TensorFlow 2.16+ writes its start-up notices (oneDNN, ``cudart_stub``, CPU
features, ``failed call to cuInit`` on a machine with CUDA libraries and no
GPU) from C++ before absl's logging is initialised, straight to file
descriptor 2, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. So the first import of
``tensorflow`` (or ``keras``, which imports it) runs with descriptor 2 sent to
a temporary file, its devices are listed there too (where ``cuInit`` is
called), and every line that is not known chatter is written back: a real
error still shows. The hook is an import finder, so TensorFlow stays imported
lazily, only where a model is built. A leaf: the standard library only.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

#: the top-level modules whose first import is made quiet (keras imports tensorflow under its TF backend)
NOISY = ("tensorflow", "keras")

# glog-style lines: severity, date, time, thread, file:line]
_GLOG = re.compile(r"^(?P<sev>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ (?P<src>[\w./-]+):\d+\] (?P<text>.*)$")
#: error-level lines TensorFlow prints at start-up that are no error (no GPU here, plugins registered twice)
_BENIGN_ERRORS = re.compile(r"failed call to cuInit|Unable to register cu|Attempting to register factory|"
                            r"could not retrieve CUDA device count|cuda_diagnostics|kernel driver does not appear")
_CHATTER = (re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
            re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler"),
            re.compile(r"^WARNING: this could be a sign of a (?:false positive|mismatch).*"),)


def is_chatter(line: str) -> bool:
    """Whether one stderr line is TensorFlow/absl/CUDA start-up chatter (not an error worth showing)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return False
    m = _GLOG.match(line)
    if m:  # info and warning lines are chatter; an error line only when it is a known harmless one
        return m["sev"] in "IW" or bool(_BENIGN_ERRORS.search(m["text"]))
    return any(p.match(line) for p in _CHATTER)


@contextlib.contextmanager
def quiet_stderr():
    """Descriptor 2 goes to a temporary file inside; on leaving, every line that is not chatter is written back."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines(True) if not is_chatter(ln)]
            if kept:
                os.write(2, "".join(kept).encode("utf-8", "replace"))


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader with stderr filtered; lists TensorFlow's devices there so ``cuInit``'s notice is too."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with quiet_stderr():
            self._loader.exec_module(module)
            if module.__name__ == "tensorflow":
                with contextlib.suppress(Exception):  # a broken driver is the user's to see when a model runs
                    module.config.list_physical_devices()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the first import of each of :data:`NOISY`; every other import is left to the other finders."""

    def __init__(self):
        self._busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in NOISY or self._busy or fullname in sys.modules:
            return None
        self._busy = True  # find_spec below asks the finders again, this one included
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


def install(verbose: bool = False) -> None:
    """Make this process quiet (the default of every ``featcache`` command); ``verbose`` leaves all as it is.

    Called before any model is built. Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (C++
    errors still show) unless the user set it, quietens the ``tensorflow`` and
    ``absl`` Python loggers below errors, hides Keras' and TensorFlow's own
    Python warnings, and filters the first TensorFlow import's stderr.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow|absl)(\.|$)")
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
