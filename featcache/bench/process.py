"""Running heads: each task in a fresh Python process with a time budget, n_jobs at a time (joblib, or Ray)."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from joblib import Parallel, delayed

from ..ray_cluster import connect, import_ray
from .tasks import Task

BACKENDS = ("threading", "ray")
#: how much of a failed head process's stderr its row keeps (the end, where the error is)
STDERR_TAIL = 2000
#: the head process's program: its entry point imported by module path (never the caller's ``__main__``)
CHILD_CODE = "import sys; sys.path.pop(0); from featcache.bench.child import _child_main; _child_main(sys.argv[1])"


def run_task(task: Task, timeout: float | None) -> dict:
    """Run one task in a fresh Python process; kill it past ``timeout`` seconds.

    The process runs ``python -c`` with featcache's own entry point rather
    than multiprocessing's spawn, which re-runs the caller's ``__main__``
    script (and so fails in a script or notebook without a
    ``if __name__ == "__main__":`` guard). A process that dies without a
    result leaves the end of its stderr in the row.
    """
    root = str(Path(__file__).resolve().parents[2])  # the child imports this very featcache
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory(prefix="featcache-head-") as tmp:
        result_path = os.path.join(tmp, "result.pkl")
        t0 = time.perf_counter()
        with open(os.path.join(tmp, "stderr"), "w+b") as err:
            proc = subprocess.Popen([sys.executable, "-c", CHILD_CODE, result_path], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
            timed_out = False
            try:
                try:
                    pickle.dump(task, proc.stdin)
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # died at start: its stderr says why
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            wall = time.perf_counter() - t0
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace").strip()
        result = None
        if not timed_out and os.path.isfile(result_path):
            with open(result_path, "rb") as f:
                result = pickle.load(f)
        progress = None
        with contextlib.suppress(OSError):
            progress = Path(result_path + ".progress").read_text("utf-8").strip() or None
    if result is None:
        if timed_out:
            result = {"status": "timed out", "error": f"no result within the {timeout:g} s budget"
                                                      + (f"; it had got as far as: {progress}" if progress else ""),
                      "progress": progress}
        else:
            last = stderr.splitlines()[-1] if stderr else ""
            result = {"status": "failed", "error": f"the head's process died (exit code {proc.returncode})"
                                                   + (f": {last}" if last else "")}
            if stderr:
                result["stderr"] = stderr[-STDERR_TAIL:]
    result["wall_seconds"] = wall
    result["budget_seconds"] = timeout
    return result


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
    def job(t):
        return t, run_task(t, timeout)

    if backend != "ray":
        yield from Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")(
            delayed(job)(t) for t in todo)
        return
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
