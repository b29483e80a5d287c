"""The head's own process: tasks in, one after another, each row's result out, with its own peak memory.

It runs ``python -c`` (never the parent's ``__main__``) and imports this
module by its path, :data:`featcache.bench.process.CHILD_CODE`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pickle
import resource
import sys
import threading
import time
import traceback
from pathlib import Path

from ..heads import HEADS, register_head
from . import progress as _progress_file
from .protocol import evaluate
from .stats import bootstrap_intervals
from .tasks import Task, task_spec

def _rss_mb(field: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(task: Task) -> dict:
    """Evaluate one task in the head's own process: the row's result, with its own peak memory."""
    result = {}
    try:
        if task.spec is not None and task.spec.name not in HEADS:
            register_head(task.spec)  # a head registered in the parent only: this process knows it too
        spec = task_spec(task)
        spec.make()  # import the head's libraries before memory is measured
        if spec.kind == "keras":
            import keras  # noqa: F401 - heavy: imported before memory is measured, and by Keras heads only
        start = _rss_mb("VmRSS")
        own = _reset_peak_rss() and start is not None
        base = start if own else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            result = {"status": "ok", **evaluate(task)}
        finally:
            peak = _rss_mb("VmHWM") if own else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            result["peak_memory_mb"] = max(0.0, (peak or 0.0) - base)
        y_test = result.pop("y_test")
        result.update(bootstrap_intervals(y_test, result["test_predictions"]))
    except BaseException as exc:  # noqa: BLE001 - reported in the row
        msg = str(exc) or exc.__class__.__name__
        result = {"status": "failed", "error": f"{exc.__class__.__name__}: {msg}",
                  "traceback": traceback.format_exc(limit=4), "peak_memory_mb": result.get("peak_memory_mb")}
    return result


def _child_main(pipe: int) -> None:
    """The head process's entry point: ``(result_path, Task)`` pickles on stdin, one after another; each
    result pickled into its ``result_path``, then a line on the parent's pipe. stdin's end ends the process.

    It runs ``python -c`` (never the parent's ``__main__``), so a script that
    calls :func:`bench` without an ``if __name__ == "__main__":`` guard works.
    ``pipe`` is the parent's end of stdout (:data:`~featcache.bench.process.CHILD_CODE` points stdout at
    /dev/null, so a head that prints never writes into it); "ready" goes there once the imports are done. A
    thread watches the parent: if it dies, the head does too.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parent = os.getppid()

    def orphaned():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=orphaned, daemon=True).start()
    os.write(pipe, b"ready\n")
    while True:
        try:
            result_path, task = pickle.load(sys.stdin.buffer)
        except EOFError:
            break
        _progress_file.PROGRESS_FILE = result_path + ".progress"
        result = _child(task)
        tmp = result_path + ".part"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.replace(tmp, result_path)
        _release_memory()
        sys.stderr.flush()
        os.write(pipe, b"\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (Keras/TF can hang or crash there)


def _release_memory() -> None:
    """Give back what the task freed, so the next row's peak memory is its own: Keras' graph state, Python's
    garbage, and glibc's free pages (``malloc_trim``)."""
    if "keras" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["keras"].backend.clear_session()
    gc.collect()
    with contextlib.suppress(Exception):  # glibc only
        ctypes.CDLL(None).malloc_trim(0)
