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
graph is reported in one line and extraction goes on with Keras.

The OpenVINO IR of each graph is cached under ``$FEATCACHE_HOME/openvino``,
keyed by the sha256 of everything that shapes the graph (the extraction
parameters with the weights' identity, plus the Keras and OpenVINO versions),
so a second run converts nothing. It is a derived cache entry
(:mod:`featcache.derived`): a record of its files' sha256s, written last, is
checked before each use, and a damaged entry is converted again with one line
saying so. The record also keeps the Keras graph's output on a fixed probe
batch; every freshly compiled graph runs the probe first and is used only
when it agrees (relative L2 difference per row <= 1e-2 in float32), else the
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
from .files import atomic_write_bytes, fsync_dir, fsync_file, pause_point, remove_stale_temporaries, sha256_path
from .homes import featcache_home

#: the choices of ``--runtime`` (``auto`` picks one of the others)
RUNTIMES = ("auto", "keras", "openvino")

#: the files of a cached IR entry (its record, record.json, is written last)
IR_FILES = ("model.xml", "model.bin", "identity.json")
#: the probe batch: this many seeded uint8 images at the graph's input size
PROBE_IMAGES, PROBE_SEED = 2, 20261204
#: the largest relative L2 difference of a probe row allowed in float32 (cosine >= 0.99995), and in float16/bfloat16
PROBE_TOLERANCE, PROBE_TOLERANCE_LOW = 1e-2, 1e-1


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
                 cache: bool = True):
        import openvino as ov

        self.names, self.batch_size = list(names), int(batch_size)
        core = ov.Core()  # no CACHE_DIR: its blobs are OpenVINO's, unchecked, and save ~0.1 s a run
        home = featcache_home() / "openvino" if cache else None
        config = {"PERFORMANCE_HINT": "THROUGHPUT"}
        low_precision = identity.get("compute_dtype", "float32") != "float32"
        if not low_precision:  # never bf16 behind our back (AMX, AVX512-BF16)
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        images = probe_images(model)
        for attempt in (1, 2):
            ov_model, entry, expected = _ir(core, model, self.names, identity, home)
            self.ir_path = entry.folder / "model.xml" if entry else None
            self._compile(ov, core, ov_model, model, config)
            error = probe_error(self(images), expected)
            if error <= (PROBE_TOLERANCE_LOW if low_precision else PROBE_TOLERANCE):
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

    record = {"graph": identity, "backend": keras.backend.backend(),
              **{p: _version(p) for p in ("keras", "openvino", "tensorflow", "jax")}}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _ir(core, model, names, identity: dict, home: Path | None):
    """``(OpenVINO model, its checked cache entry or None, Keras' probe outputs)``: from the IR cache when
    its files match their record, else exported by Keras (and cached with a new record)."""
    if home is None:
        return _export(model, None), None, keras_probe(model, names)
    name = f"{identity.get('backbone', 'graph')}-{ir_key(identity)[:16]}"
    entry = derived.Entry(home / name, IR_FILES, what="the cached OpenVINO IR")
    record, reason = entry.check()
    if record is not None:
        try:
            expected = {n: np.asarray(record["probe"][n], np.float32) for n in names}
            return core.read_model(str(entry.folder / "model.xml")), entry, expected
        except Exception as exc:  # noqa: BLE001 - a record without the probe, an IR OpenVINO refuses
            reason = f"it cannot be used ({exc.__class__.__name__})"
    expected = keras_probe(model, names)
    try:
        if reason:
            entry.discard(reason)
        if entry.folder.is_dir() and any(entry.folder.iterdir()):  # files not ours: leave them, work in memory
            return _export(model, None), None, expected
        home.mkdir(parents=True, exist_ok=True)
        _write_entry(model, identity, entry, expected)
    except OSError:  # a read-only home: convert in memory, every run
        return _export(model, None), None, expected
    return core.read_model(str(entry.folder / "model.xml")), entry, expected


def _write_entry(model, identity: dict, entry, expected: dict) -> None:
    """Export the IR into a staging folder, record its sha256s and probe outputs, and rename it in place."""
    staged = entry.folder.with_name(f".{entry.folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)  # only ever this process's own staging name
    staged.mkdir(parents=True)
    try:
        _export(model, staged / "model.xml")
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


def keras_probe(model, names) -> dict[str, np.ndarray]:
    """The Keras graph's outputs on the probe batch, run eagerly (no new trace for its shape)."""
    import keras

    out = model(probe_images(model), training=False)
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


def _export(model, path: Path | None):
    """Keras' own OpenVINO export of ``model``; in memory when ``path`` is None."""
    import tempfile

    if path is not None:
        model.export(str(path), format="openvino", verbose=False)
        return path
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        model.export(os.path.join(tmp, "model.xml"), format="openvino", verbose=False)
        return ov.Core().read_model(os.path.join(tmp, "model.xml"))


def make_runtime(runtime: str, model, names, batch_size: int, *, identity: dict, threads: int | None = None):
    """The runtime that will run ``model``, and a one-line note when it is not the one asked for.

    Args:
        runtime: one of :data:`RUNTIMES`.
        model: the Keras extractor graph (uint8 images in, a dict of named outputs).
        names: the output names to return.
        batch_size: images per model call.
        identity: what shapes the graph (names the cached IR).
        threads: OpenVINO inference threads (None: all cores).

    Returns:
        ``(runtime, note)``: a callable ``uint8 batch -> {name: float32}`` with a
        ``name``, and None or the line that says why Keras runs instead.

    Examples:
        >>> rt, note = make_runtime("keras", model, names, 64, identity={})  # doctest: +SKIP
    """
    chosen = choose(runtime)
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


def check_ir_target(keras_file) -> None:
    """Refuse, before anything is written, IR files beside ``keras_file`` that featcache did not write.

    Ours: an ``.xml`` naming a ``featcache_`` network; a ``.bin`` beside such
    an ``.xml``, or alone with the sha256 our sidecar records (a kill fell
    between the renames); the sidecar itself when it is our JSON record. A set
    of ours that does not match is not trusted, only replaced.
    """
    from .errors import FeatcacheError

    xml, binary, sidecar = ir_paths(keras_file)
    record = _read_ir_record(sidecar)
    for path in (xml, binary, sidecar):
        if not os.path.lexists(path):
            continue
        if path == xml:
            ours = _is_our_ir(xml)
        elif path == binary:
            ours = xml.is_file() and _is_our_ir(xml) or record is not None and _sha256(binary) == record["bin_sha256"]
        else:
            ours = record is not None
        if path.is_symlink() or not path.is_file() or not ours:
            raise FeatcacheError(f"{path} exists and is not an IR featcache exported; move it away first")
    if not openvino_installed():
        raise FeatcacheError("export --format openvino needs OpenVINO: pip install 'featcache[openvino]'")


def export_ir(keras_file, model=None) -> Path:
    """Write an OpenVINO IR (``NAME.xml`` + ``NAME.bin``) beside a ``.keras`` model featcache exported.

    For deployment with nothing but OpenVINO: the same graph (images in,
    class probabilities out), converted by Keras' own OpenVINO export, weights
    kept in float32. Compile it with ``{"INFERENCE_PRECISION_HINT": "f32"}``:
    on a CPU with AMX or AVX512-BF16, OpenVINO's default computes in bfloat16,
    which moved a probability from 0.96 to 0.0 in this project's test (the IR
    cannot carry the hint). Existing IR files are replaced only when featcache wrote them.

    Args:
        keras_file: a ``.keras`` file written by ``featcache export``; the IR
            takes its name.
        model: the Keras model to convert (default: the one in ``keras_file``).
            ``featcache.export`` passes one of a fixed input size, since
            OpenVINO converts no antialiased resize.

    Returns:
        The path of the ``.xml`` file.

    Examples:
        >>> export_ir("tour/model.keras")  # doctest: +SKIP
        PosixPath('tour/model.xml')
    """
    from .errors import FeatcacheError

    keras_file = Path(keras_file)
    xml, binary, _sidecar = ir_paths(keras_file)
    check_ir_target(keras_file)
    import keras
    import openvino as ov

    if model is None:
        model = keras.models.load_model(keras_file, compile=False)
    if not str(model.name).startswith("featcache_"):
        raise FeatcacheError(f"{keras_file} is not a model featcache exported")
    ov_model = _export(model, None)
    ov_model.set_friendly_name(model.name)
    for path in (xml, binary, ir_paths(keras_file)[2]):
        remove_stale_temporaries(path, (".xml", ".bin"))  # what killed exports to this name left behind
    staged = keras_file.with_name(f".{keras_file.stem}.tmp-{os.getpid()}.xml")
    try:
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        _commit_ir(keras_file, staged)
    finally:
        staged.unlink(missing_ok=True)
        staged.with_suffix(".bin").unlink(missing_ok=True)
    return xml


def _is_our_ir(xml: Path) -> bool:
    try:
        with open(xml, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'<net name="featcache_' in head


# --------------------------------------------------------------------------- the IR as one unit beside its .keras

#: the ``format`` of the sidecar that ties an IR pair to its ``.keras`` model
IR_RECORD_FORMAT = "featcache-openvino-ir/1"


def ir_paths(keras_file) -> tuple[Path, Path, Path]:
    """``(NAME.xml, NAME.bin, NAME.openvino.json)`` beside ``NAME.keras``: the IR pair and its sidecar."""
    keras_file = Path(keras_file)
    return (keras_file.with_suffix(".xml"), keras_file.with_suffix(".bin"),
            keras_file.with_name(keras_file.stem + ".openvino.json"))


def _sha256(path: Path) -> str | None:
    try:
        return sha256_path(path)
    except OSError:
        return None


def _read_ir_record(sidecar: Path) -> dict | None:
    """The sidecar featcache wrote beside an IR (the sha256 of the .keras, .xml and .bin), or None."""
    if sidecar.is_symlink() or not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_bytes())
    except (OSError, ValueError):
        return None
    keys = ("keras_sha256", "xml_sha256", "bin_sha256")
    if not isinstance(record, dict) or record.get("format") != IR_RECORD_FORMAT or \
            not all(isinstance(record.get(k), str) for k in keys):
        return None
    return record


def ir_matches(keras_file) -> bool:
    """Whether the IR beside ``keras_file`` is the one featcache made from it: every sha256 its sidecar records.

    Examples:
        >>> ir_matches("tour/model.keras")  # doctest: +SKIP
        True
    """
    xml, binary, sidecar = ir_paths(keras_file)
    record = _read_ir_record(sidecar)
    return record is not None and _sha256(Path(keras_file)) == record["keras_sha256"] \
        and _sha256(xml) == record["xml_sha256"] and _sha256(binary) == record["bin_sha256"]


def retire_ir(keras_file) -> None:
    """Remove featcache's IR beside ``keras_file`` (``.xml`` first: no loadable pair is left), as the .keras
    is about to change; anything not provably ours is refused untouched."""
    check_ir_target(keras_file)
    xml, binary, _sidecar = ir_paths(keras_file)
    xml.unlink(missing_ok=True)
    fsync_dir(xml.parent)
    binary.unlink(missing_ok=True)


def _commit_ir(keras_file: Path, staged_xml: Path) -> None:
    """Put a staged IR pair beside ``keras_file`` so that no reader can load a mismatched pair.

    The old pair goes first (its ``.xml`` before its ``.bin``), then the
    sidecar with the new sha256s, the ``.bin``, and the ``.xml`` last: a
    kill leaves the old pair, no ``.xml``, or the new pair.
    """
    xml, binary, sidecar = ir_paths(keras_file)
    staged_bin = staged_xml.with_suffix(".bin")
    fsync_file(staged_xml)
    fsync_file(staged_bin)
    record = {"format": IR_RECORD_FORMAT, "keras": keras_file.name, "keras_sha256": _sha256(keras_file),
              "xml_sha256": _sha256(staged_xml), "bin_sha256": _sha256(staged_bin)}
    retire_ir(keras_file)
    atomic_write_bytes(sidecar, (json.dumps(record, indent=1) + "\n").encode())
    os.replace(staged_bin, binary)
    pause_point(f"before-rename:{xml.name}")
    os.replace(staged_xml, xml)
    fsync_dir(xml.parent)
