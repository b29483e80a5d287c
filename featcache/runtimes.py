"""Inference runtimes for stage one: what runs the Keras extractor graph on each batch.

The Keras graph from :func:`featcache.backbones.graph.build_extractor` stays
the one definition of the extractor; a runtime only decides what executes it:

* ``keras``: the graph's own backend (TensorFlow or JAX), ``predict_on_batch``
  on batches padded to one shape, so it is traced once;
* ``openvino``: the same graph exported by Keras (``model.export(...,
  format="openvino")``) and compiled by OpenVINO's CPU plugin, with
  asynchronous infer requests, as many as its THROUGHPUT hint asks for. On a
  CPU it runs the same graph 2-3x faster than TensorFlow (docs/PERFORMANCE.md);
* ``auto`` (the default): OpenVINO when its extra is installed and Keras sees
  no GPU, Keras otherwise.

The runtime is not part of the cache key: both give the same features (cosine
>= 0.9999 per row on real photos, tests/test_runtimes.py), so a cache may be
resumed with another runtime. A runtime that is missing or fails to compile a
graph is reported in one line and extraction goes on with Keras (at f32; a
reduced ``--precision`` fails in one line instead: Keras computes f32).

The OpenVINO IR of each graph is cached under ``$FEATCACHE_HOME/openvino``,
keyed by the sha256 of everything that shapes the graph (the extraction
parameters with the weights' identity, plus the Keras and OpenVINO versions),
so a second run converts nothing. It is a derived cache entry
(:mod:`featcache.derived`): a record of its files' sha256s, written last, is
checked before each use, and a damaged entry is converted again with one line
saying so. The record also keeps the Keras graph's output on a fixed probe
batch; every freshly compiled graph runs the probe first and is used only
when it agrees (relative L2 difference per row <= 1e-2 in f32, looser at
bf16 and int8: :mod:`featcache.precision`), else the
IR is converted again once and then Keras runs, with one line: features
that disagree with Keras are never written. OpenVINO's own compiled-blob
cache (CACHE_DIR) is not used: its blobs cannot be checked, and compiling
again costs a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np

from . import derived
from .errors import FeatcacheError
from .files import fsync_dir
from .homes import featcache_home
from .precision import PROBE_TOLERANCE, compile_hint, quantize

#: the choices of ``--runtime`` (``auto`` picks one of the others)
RUNTIMES = ("auto", "keras", "openvino")

#: the files of a cached IR entry (its record, record.json, is written last)
IR_FILES = ("model.xml", "model.bin", "identity.json")
#: the probe batch: this many seeded uint8 images at the graph's input size
PROBE_IMAGES, PROBE_SEED = 2, 20261204
#: the largest relative L2 difference of a probe row under Keras' float16/bfloat16 mixed precision (each --precision
#: has its own: precision.PROBE_TOLERANCE)
PROBE_TOLERANCE_LOW = 1e-1


def openvino_installed() -> bool:
    """Whether the ``openvino`` package (the ``featcache[openvino]`` extra) can be imported.

    Returns:
        True when ``import openvino`` succeeds.

    Examples:
        >>> isinstance(openvino_installed(), bool)
        True
    """
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is as good as none
        return False
    return True


def keras_has_accelerator() -> bool:
    """Whether Keras' backend sees a GPU (or TPU): there Keras itself is the fast runtime.

    Returns:
        True when the TensorFlow, JAX or PyTorch backend reports an accelerator.

    Examples:
        >>> keras_has_accelerator()  # doctest: +SKIP
        False
    """
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return jax.default_backend() != "cpu"
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no device query: assume a CPU
        return False
    return False


def choose(runtime: str = "auto") -> str:
    """The runtime ``runtime`` stands for on this machine: ``keras`` or ``openvino``.

    Args:
        runtime: one of :data:`RUNTIMES`.

    Returns:
        ``runtime`` itself unless it is ``auto``; for ``auto``, ``openvino`` when
        it is installed and Keras sees no GPU, else ``keras``.

    Examples:
        >>> choose("keras")
        'keras'
    """
    if runtime != "auto":
        return runtime
    return "openvino" if openvino_installed() and not keras_has_accelerator() else "keras"


class KerasRuntime:
    """The graph's own backend: ``predict_on_batch`` on batches padded to one shape."""

    name = "keras"

    def __init__(self, model, names, batch_size: int):
        self.model, self.names, self.batch_size = model, list(names), int(batch_size)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in self.names}
        for a in range(0, images.shape[0], self.batch_size):
            chunk = images[a:a + self.batch_size]
            m = chunk.shape[0]
            if m < self.batch_size:  # pad: one traced shape for every batch
                chunk = _pad(chunk, self.batch_size)
            res = self.model.predict_on_batch(chunk)
            for k in self.names:
                out[k].append(np.asarray(res[k], dtype=np.float32)[:m])
        return _join(out)


class ProbeMismatch(Exception):
    """The compiled graph's output on the probe batch is not the Keras graph's: it is not used."""


class OpenVINORuntime:
    """The graph compiled by OpenVINO for the CPU, run with asynchronous infer requests.

    Each batch is split into as many equal sub-batches as the compiled model's
    ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (THROUGHPUT hint: one per stream), which
    run at once; the sub-batch shape is static, so a short batch is padded.
    Before any image, the fixed probe batch runs through the compiled graph and
    must give the Keras graph's output (recorded when the IR was converted); a
    mismatch converts the IR again, once, then raises :class:`ProbeMismatch`.
    """

    name = "openvino"

    def __init__(self, model, names, batch_size: int, *, identity: dict, threads: int | None = None,
                 cache: bool = True, calibrate=None):
        import openvino as ov

        self.names, self.batch_size = list(names), int(batch_size)
        self.precision = identity.get("precision", "f32")
        core = ov.Core()  # no CACHE_DIR: its blobs are OpenVINO's, unchecked, and save ~0.1 s a run
        home = featcache_home() / "openvino" if cache else None
        config = {"PERFORMANCE_HINT": "THROUGHPUT"}
        low_precision = identity.get("compute_dtype", "float32") != "float32"
        if not low_precision:  # never bf16 behind our back (AMX, AVX512-BF16): only when asked for
            config["INFERENCE_PRECISION_HINT"] = compile_hint(self.precision)
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        tolerance = PROBE_TOLERANCE_LOW if low_precision else PROBE_TOLERANCE[self.precision]
        # int8 is calibrated on real images, and seeded noise lies outside its ranges: its probe is two of them
        images = calibrate(PROBE_IMAGES) if self.precision == "int8" else probe_images(model)
        for attempt in (1, 2):
            ov_model, entry, expected = _ir(core, model, self.names, identity, home, calibrate, images)
            self.ir_path = entry.folder / "model.xml" if entry else None
            self._compile(ov, core, ov_model, model, config)
            error = probe_error(self(images), expected)
            if error <= tolerance:
                return
            if attempt == 2:
                if entry is not None:
                    entry.discard()  # known to disagree: the next run converts afresh
                raise ProbeMismatch(f"its output on the probe batch differs from keras' by {error:.3g} (relative)")
            if entry is not None:
                entry.discard(f"its output on the probe batch differs from keras' by {error:.3g}",
                              "converting it again")

    def _compile(self, ov, core, ov_model, model, config) -> None:
        probe = core.compile_model(ov_model, "CPU", config)
        self.requests = max(1, min(int(probe.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")), self.batch_size))
        self.sub = -(-self.batch_size // self.requests)
        ov_model.reshape([self.sub] + [int(d) for d in model.input.shape[1:]])
        self.compiled = core.compile_model(ov_model, "CPU", config)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.ports = {n: self.compiled.output(n) for n in self.names}
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self._results: dict = {}
        self.queue.set_callback(self._done)

    def _done(self, request, slot):
        self._results[slot] = {n: np.array(request.get_tensor(p).data, dtype=np.float32, copy=True)
                               for n, p in self.ports.items()}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        n = images.shape[0]
        self._results = {}
        slots = []
        for slot, a in enumerate(range(0, n, self.sub)):
            chunk = images[a:a + self.sub]
            m = chunk.shape[0]
            if m < self.sub:
                chunk = _pad(chunk, self.sub)
            self.queue.start_async(np.ascontiguousarray(chunk), userdata=slot)
            slots.append((slot, m))
        self.queue.wait_all()
        out: dict[str, list] = {k: [] for k in self.names}
        for slot, m in slots:
            for k in self.names:
                out[k].append(self._results[slot][k][:m])
        return _join(out)


def _pad(chunk: np.ndarray, size: int) -> np.ndarray:
    pad = np.zeros((size - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
    return np.concatenate([chunk, pad])


def _join(out: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in out.items()}


def ir_key(identity: dict) -> str:
    """The sha256 naming a graph's cached IR: its identity plus the Keras and OpenVINO versions.

    Args:
        identity: everything that shapes the extractor graph (the extraction
            parameters, with the weights' identity).

    Returns:
        A hex digest.

    Examples:
        >>> len(ir_key({"backbone": "efficientnet_lite0"}))
        64
    """
    import keras

    packages = ("keras", "openvino", "tensorflow", "jax") + (("nncf",) if identity.get("precision") == "int8" else ())
    record = {"graph": identity, "backend": keras.backend.backend(), **{p: _version(p) for p in packages}}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _graph(model, path: Path | None, identity: dict, calibrate):
    """The OpenVINO graph of ``model`` (int8: quantized on ``calibrate()``'s images), saved at ``path`` when given."""
    if identity.get("precision") != "int8":
        return export_graph(model, path)
    import openvino as ov

    quantized = quantize(export_graph(model, None), calibrate())
    if path is None:
        return quantized
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def _ir(core, model, names, identity: dict, home: Path | None, calibrate=None, probe=None):
    """``(OpenVINO model, its checked cache entry or None, Keras' probe outputs)``: from the IR cache when
    its files match their record, else exported by Keras (and cached with a new record)."""
    if identity.get("precision") == "bf16":  # the f32 graph, compiled otherwise: one cached IR for both
        identity = {k: v for k, v in identity.items() if k != "precision"}
    if home is None:
        return _graph(model, None, identity, calibrate), None, keras_probe(model, names, probe)
    name = f"{identity.get('backbone', 'graph')}-{ir_key(identity)[:16]}"
    entry = derived.Entry(home / name, IR_FILES, what="the cached OpenVINO IR")
    record, reason = entry.check()
    if record is not None:
        try:
            expected = {n: np.asarray(record["probe"][n], np.float32) for n in names}
            return core.read_model(str(entry.folder / "model.xml")), entry, expected
        except Exception as exc:  # noqa: BLE001 - a record without the probe, an IR OpenVINO refuses
            reason = f"it cannot be used ({exc.__class__.__name__})"
    expected = keras_probe(model, names, probe)
    try:
        if reason:
            entry.discard(reason)
        if entry.folder.is_dir() and any(entry.folder.iterdir()):  # files not ours: leave them, work in memory
            return _graph(model, None, identity, calibrate), None, expected
        home.mkdir(parents=True, exist_ok=True)
        _write_entry(model, identity, entry, expected, calibrate)
    except OSError:  # a read-only home: convert in memory, every run
        return _graph(model, None, identity, calibrate), None, expected
    return core.read_model(str(entry.folder / "model.xml")), entry, expected


def _write_entry(model, identity: dict, entry, expected: dict, calibrate=None) -> None:
    """Export the IR into a staging folder, record its sha256s and probe outputs, and rename it in place."""
    staged = entry.folder.with_name(f".{entry.folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)  # only ever this process's own staging name
    staged.mkdir(parents=True)
    try:
        _graph(model, staged / "model.xml", identity, calibrate)
        (staged / "identity.json").write_text(json.dumps(identity, sort_keys=True, default=str, indent=1))
        derived.Entry(staged, IR_FILES).seal({"probe": {n: v.tolist() for n, v in expected.items()}})
        fsync_dir(staged)
        if entry.folder.is_dir():
            entry.folder.rmdir()  # emptied by discard: a stray file keeps it, and this entry is not cached
        try:
            os.rename(staged, entry.folder)  # another process may have won the race: its entry is as good
        except OSError:
            pass
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def probe_images(model) -> np.ndarray:
    """The fixed probe batch: :data:`PROBE_IMAGES` seeded uint8 images of the graph's input size."""
    shape = (PROBE_IMAGES,) + tuple(int(d) for d in model.input.shape[1:])
    return np.random.default_rng(PROBE_SEED).integers(0, 256, shape, dtype=np.uint8)


def keras_probe(model, names, images=None) -> dict[str, np.ndarray]:
    """The Keras graph's outputs on the probe batch (default: :func:`probe_images`), run eagerly."""
    import keras

    out = model(probe_images(model) if images is None else images, training=False)
    return {n: np.asarray(keras.ops.convert_to_numpy(out[n]), np.float32) for n in names}


def probe_error(got: dict, expected: dict) -> float:
    """The largest relative L2 difference of a probe row between ``got`` and ``expected`` (0 when equal)."""
    worst = 0.0
    for n, ref in expected.items():
        a = np.asarray(got[n], np.float64).reshape(len(ref), -1)
        b = np.asarray(ref, np.float64).reshape(len(ref), -1)
        if a.shape != b.shape:
            return float("inf")
        scale = np.maximum(np.maximum(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)), 1e-12)
        rel = np.linalg.norm(a - b, axis=1) / scale
        if not np.isfinite(rel).all():  # a NaN compares false with any tolerance
            return float("inf")
        worst = max(worst, float(rel.max()))
    return worst


def export_graph(model, path: Path | None):
    """Keras' own OpenVINO export of ``model``; in memory when ``path`` is None."""
    import tempfile

    if path is not None:
        model.export(str(path), format="openvino", verbose=False)
        return path
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        model.export(os.path.join(tmp, "model.xml"), format="openvino", verbose=False)
        return ov.Core().read_model(os.path.join(tmp, "model.xml"))


def make_runtime(runtime: str, model, names, batch_size: int, *, identity: dict, threads: int | None = None,
                 calibrate=None):
    """The runtime that will run ``model``, and a one-line note when it is not the one asked for.

    Args:
        runtime: one of :data:`RUNTIMES`.
        model: the Keras extractor graph (uint8 images in, a dict of named outputs).
        names: the output names to return.
        batch_size: images per model call.
        identity: what shapes the graph (names the cached IR).
        threads: OpenVINO inference threads (None: all cores).
        calibrate: ``() -> uint8 images``, the int8 calibration sample (decoded only when a graph is quantized).

    Returns:
        ``(runtime, note)``: a callable ``uint8 batch -> {name: float32}`` with a
        ``name``, and None or the line that says why Keras runs instead. A
        reduced ``precision`` in ``identity`` never falls back: Keras would
        write f32 features under its key, so any failure is a FeatcacheError.

    Examples:
        >>> rt, note = make_runtime("keras", model, names, 64, identity={})  # doctest: +SKIP
    """
    chosen = choose(runtime)
    precision = identity.get("precision", "f32")
    if precision != "f32":
        if chosen != "openvino" or not openvino_installed():
            raise FeatcacheError(f"--precision {precision} runs on OpenVINO, and this run would use keras "
                                 "(a GPU, or OpenVINO missing); use --precision f32")
        try:
            return OpenVINORuntime(model, names, batch_size, identity=identity, threads=threads,
                                   calibrate=calibrate), None
        except ProbeMismatch as exc:
            raise FeatcacheError(f"--precision {precision}: openvino does not give this graph's features ({exc}); "
                                 "use --precision f32") from None
        except FeatcacheError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to convert, quantize or compile
            reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:200]
            raise FeatcacheError(f"--precision {precision}: openvino could not build this graph ({reason}); "
                                 "use --precision f32") from None
    if chosen == "openvino":
        if not openvino_installed():
            return KerasRuntime(model, names, batch_size), (
                "runtime openvino is not installed (pip install 'featcache[openvino]'); extracting with keras")
        try:
            return OpenVINORuntime(model, names, batch_size, identity=identity, threads=threads), None
        except ProbeMismatch as exc:
            return KerasRuntime(model, names, batch_size), (
                f"runtime openvino does not give this graph's features ({exc}); extracting with keras")
        except Exception as exc:  # noqa: BLE001 - any failure to convert or compile: Keras runs the graph
            reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:200]
            return KerasRuntime(model, names, batch_size), (
                f"runtime openvino could not compile this graph ({reason}); extracting with keras")
    return KerasRuntime(model, names, batch_size), None
