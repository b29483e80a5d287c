"""Running heads in Python processes of their own, with a time budget, n_jobs at a time (joblib, or Ray); in a
sweep each process takes one task after another, and one that overruns or dies is replaced."""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from joblib import Parallel, delayed

from ..ray_cluster import connect, import_ray
from .tasks import Task

BACKENDS = ("threading", "ray")
#: how much of a failed head process's stderr its row keeps (the end, where the error is)
STDERR_TAIL = 2000
#: the head process's program: its entry point imported by module path (never the caller's ``__main__``)
#: stdout is kept as the pipe to the parent and pointed at /dev/null first, so nothing printed, even while
#: importing, can read as a finished task
CHILD_CODE = ("import os, sys; sys.path.pop(0); pipe = os.dup(1); os.dup2(os.open(os.devnull, os.O_WRONLY), 1); "
              "from featcache.bench.child import _child_main; _child_main(pipe)")
#: whether a head process may take another task: only where each task's peak memory can be its own (Linux's
#: clear_refs resets the peak; elsewhere the process-lifetime peak would hide a row's)
REUSE_PROCESSES = os.access("/proc/self/clear_refs", os.W_OK)
#: how long a head process may take to exit once its stdin is closed, before it is killed
CLOSE_SECONDS = 10


def run_task(task: Task, timeout: float | None) -> dict:
    """Run one task in a fresh Python process; kill it past ``timeout`` seconds."""
    head = HeadProcess()
    try:
        return head.run(task, timeout)
    finally:
        head.close()


def _child_env() -> dict:
    root = str(Path(__file__).resolve().parents[2])  # the child imports this very featcache
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


class HeadProcess:
    """A head's process, which runs tasks one after another: a sweep pays Python's and scikit-learn's imports
    (about 3 s a row) once per process, not once per row.

    The process runs ``python -c`` with featcache's own entry point rather
    than multiprocessing's spawn, which re-runs the caller's ``__main__``
    script (and so fails in a script or notebook without a
    ``if __name__ == "__main__":`` guard). A task past its ``timeout`` has
    its process killed; a process that dies without a result leaves the end
    of its stderr in the row. Either way the process is gone (:attr:`alive`
    is False) and the pool starts a fresh one for the next task.
    """

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="featcache-head-")
        self._err = open(os.path.join(self._tmp.name, "stderr"), "w+b")
        self._n = 0
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, env=_child_env())
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = False  # the child says so once its imports are done: they count in no row's time
        self._reader = threading.Thread(target=self._read_done, daemon=True, name="featcache-head-reader")
        self._reader.start()

    def _read_done(self) -> None:
        for line in self.proc.stdout:  # "ready", then a line per finished task; the pipe ends with the process
            self._done.put(line)
        self._done.put(b"")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and not self.proc.stdin.closed

    def run(self, task: Task, timeout: float | None) -> dict:
        """The task's result; the process is killed past ``timeout`` seconds (None: no limit)."""
        self._n += 1
        result_path = os.path.join(self._tmp.name, f"result{self._n}.pkl")
        err_from = self._err.seek(0, os.SEEK_END) if self._ready else 0  # a first task's: the start-up's too
        timed_out, died = self._wait_ready(timeout)  # the imports: under the same budget, outside the row's time
        t0 = time.perf_counter()
        if not (timed_out or died):
            timed_out, died = self._send(result_path, task, timeout)
        if timed_out or died:
            self._end(kill=True)
        wall = time.perf_counter() - t0
        result = None
        if not timed_out and os.path.isfile(result_path):
            with open(result_path, "rb") as f:
                result = pickle.load(f)
        progress = None
        with contextlib.suppress(OSError):
            progress = Path(result_path + ".progress").read_text("utf-8").strip() or None
        for leftover in (result_path, result_path + ".progress"):
            with contextlib.suppress(OSError):
                os.remove(leftover)
        if result is None:
            result = self._lost(timed_out, timeout, progress, err_from)
        result["wall_seconds"] = wall
        result["budget_seconds"] = timeout
        return result

    def _wait_ready(self, timeout: float | None) -> tuple[bool, bool]:
        """``(timed out, died)`` waiting for the child's "ready" (at once once it has said it)."""
        if self._ready:
            return False, False
        try:
            self._ready = self._done.get(timeout=timeout) == b"ready\n"
        except queue.Empty:
            return True, False
        return False, not self._ready

    def _send(self, result_path: str, task: Task, timeout: float | None) -> tuple[bool, bool]:
        """``(timed out, died)``: hand ``task`` over and wait for its line."""
        try:
            pickle.dump((result_path, task), self.proc.stdin)
            self.proc.stdin.flush()
        except OSError:  # died: its stderr says why
            return False, True
        try:
            return False, not self._done.get(timeout=timeout)
        except queue.Empty:
            return True, False

    def _lost(self, timed_out: bool, timeout: float | None, progress: str | None, err_from: int) -> dict:
        """The row of a task that left no result: out of time, or its process died (the end of its stderr)."""
        if timed_out:
            return {"status": "timed out", "error": f"no result within the {timeout:g} s budget"
                                                    + (f"; it had got as far as: {progress}" if progress else ""),
                    "progress": progress}
        self._err.seek(err_from)
        stderr = self._err.read().decode("utf-8", "replace").strip()
        last = stderr.splitlines()[-1] if stderr else ""
        result = {"status": "failed", "error": f"the head's process died (exit code {self.proc.returncode})"
                                               + (f": {last}" if last else "")}
        if stderr:
            result["stderr"] = stderr[-STDERR_TAIL:]
        return result

    def _end(self, kill: bool) -> None:
        """Stop the process: its stdin closed, so it exits between tasks; killed at once with ``kill``, or when
        it has not gone within :data:`CLOSE_SECONDS`."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if kill or not _exited(self.proc, CLOSE_SECONDS):
            self.proc.kill()
        self.proc.wait()

    def close(self, kill: bool = False) -> None:
        """End the process and remove its files."""
        self._end(kill)
        self._reader.join(CLOSE_SECONDS)  # at the pipe's end, which the process's exit brings
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
        self._err.close()
        self._tmp.cleanup()


def _exited(proc, seconds: float) -> bool:
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


class HeadPool:
    """The head processes of one sweep: an idle one takes the next task; one killed or dead is replaced."""

    def __init__(self):
        self._idle: list[HeadProcess] = []
        self._busy: list[HeadProcess] = []
        self._closed = False
        self._lock = threading.Lock()

    def run(self, task: Task, timeout: float | None) -> dict:
        with self._lock:
            while self._idle and not self._idle[-1].alive:  # died while idle (the OOM killer): never given a task
                self._idle.pop().close(kill=True)
            head = self._idle.pop() if self._idle else None
        head = head or HeadProcess()
        with self._lock:
            stopped = self._closed
            if not stopped:
                self._busy.append(head)
        if stopped:  # the sweep ended while this task was being handed out
            head.close(kill=True)
            return {"status": "failed", "error": "the sweep stopped before this head ran", "wall_seconds": 0.0,
                    "budget_seconds": timeout}
        result = head.run(task, timeout)
        with self._lock:
            self._busy.remove(head)
            keep = REUSE_PROCESSES and head.alive and not self._closed
            if keep:
                self._idle.append(head)
        if not keep:
            head.close(kill=True)
        return result

    def close(self) -> None:
        """End every process: the idle ones between tasks, those still running (a sweep stopped early) at once;
        a running one's files go when its task's thread returns."""
        with self._lock:
            self._closed = True
            idle, busy, self._idle = self._idle, list(self._busy), []
        for head in idle:
            head.close()
        for head in busy:
            head._end(kill=True)


@contextlib.contextmanager
def _joblib_backend(backend: str, ray_address: str | None):
    """Make joblib's ``ray`` backend available (joining or starting Ray) for the sweep's duration."""
    if backend != "ray":
        yield
        return
    ray = import_ray()
    from ray.util.joblib import register_ray  # Ray is heavy: only for the ray backend

    register_ray()
    started = connect(ray_address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _run_tasks(todo: list, timeout: float | None, n_jobs: int, backend: str):
    """(task, result) pairs as they finish, so each row is saved as soon as it exists.

    joblib's Ray backend cannot yield results one by one, so there the tasks
    go in waves as wide as the parallelism and rows are saved after each wave.
    """
    if backend != "ray":
        pool = HeadPool()
        try:
            yield from Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")(
                delayed(lambda t: (t, pool.run(t, timeout)))(t) for t in todo)
        finally:
            pool.close()
        return

    def job(t):
        return t, run_task(t, timeout)

    import ray  # heavy: only for the ray backend

    width = n_jobs if n_jobs > 0 else max(1, int(ray.cluster_resources().get("CPU", 1)))
    for a in range(0, len(todo), width):
        yield from Parallel(n_jobs=n_jobs, backend="ray")(delayed(job)(t) for t in todo[a:a + width])


def _cores_per_head(n_jobs: int, n_tasks: int, backend: str) -> int:
    """Each head's share of this machine's cores when ``n_jobs`` heads run at once (0: all, for Ray)."""
    if backend == "ray":
        return 0
    cpus = os.cpu_count() or 1
    at_once = max(1, min(cpus if n_jobs < 0 else n_jobs, n_tasks))
    return max(1, cpus // at_once)
