"""The CPU runtime's inference precision: ``f32`` (the default), ``bf16`` and ``int8``, and what this CPU supports.

* ``f32``: the OpenVINO graph compiled with ``INFERENCE_PRECISION_HINT`` f32,
  never bf16 behind the user's back (OpenVINO's own default on AVX512-BF16
  and AMX CPUs);
* ``bf16``: the same f32 graph compiled with the bf16 hint, on a CPU whose
  OpenVINO plugin reports ``BF16`` (AVX512-BF16 or AMX);
* ``int8``: the graph quantized by NNCF's post-training quantization
  (``nncf.quantize``, its default min-max statistics), calibrated on
  :data:`CALIBRATION_IMAGES` images of the source drawn with a fixed seed; its
  int8 layers run on VNNI or AMX where the CPU has them.

The precision is part of the cache key, and so for int8 is the calibration
sample's record (:func:`calibration_record`: its size, seed and the sha256 of
its items' ids), so features of two precisions never share
a cache and a cache resumes on another machine only at its own precision. A
precision this CPU or this install cannot run is refused in one line before
any work (:func:`check_supported`): falling back to f32 would write f32
features under a bf16 key.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .errors import FeatcacheError

#: the choices of ``--precision``
PRECISIONS = ("f32", "bf16", "int8")
#: images in the int8 calibration sample (all of them in a smaller source), and the seed that draws them
CALIBRATION_IMAGES, CALIBRATION_SEED = 300, 0
#: the largest relative L2 difference of a probe row from the Keras graph's float32 output, per precision:
#: f32 is the same arithmetic (cosine >= 0.99995); bf16 is probed on seeded noise, far from real images (Lite0 at
#: 160 px: 0.101 on it, 0.066 at worst on real photos), int8 on two of its calibration images (noise lies outside
#: the ranges it was calibrated on: 0.71 for Lite0 at 96 px; on its own images 0.43); either catches a broken graph (~1)
PROBE_TOLERANCE = {"f32": 1e-2, "bf16": 0.2, "int8": 0.6}
#: what each precision needs from OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU
NEEDS = {"f32": "FP32", "bf16": "BF16", "int8": "INT8"}
NNCF_INSTALL = "pip install 'featcache[int8]'"


def cpu_capabilities() -> frozenset[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU (``FP32``, ``BF16``, ``INT8`` ...); empty without it.

    Examples:
        >>> "FP32" in cpu_capabilities() or not cpu_capabilities()
        True
    """
    try:
        import openvino as ov

        return frozenset(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - no OpenVINO, or no CPU plugin: nothing is supported
        return frozenset()


def nncf_installed() -> bool:
    """Whether NNCF (the ``featcache[int8]`` extra) can be imported."""
    try:
        import nncf  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is as good as none
        return False
    return True


def unsupported(precision: str, capabilities: frozenset[str] | None = None) -> str | None:
    """Why ``precision`` cannot run here, in one line, or None when it can."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
    if precision == "f32":
        return None
    caps = cpu_capabilities() if capabilities is None else capabilities
    if not caps:
        return f"--precision {precision} runs on OpenVINO, which is not installed: pip install 'featcache[openvino]'"
    if NEEDS[precision] not in caps:
        what = "AVX512-BF16 or AMX" if precision == "bf16" else "int8 support"
        return (f"--precision {precision} needs a CPU with {what}; this one's OpenVINO reports "
                f"{', '.join(sorted(caps))}: use --precision {'int8' if 'INT8' in caps else 'f32'}")
    if precision == "int8" and not nncf_installed():
        return f"--precision int8 quantizes the graph with NNCF, which is not installed: {NNCF_INSTALL}"
    return None


def supported() -> list[str]:
    """The precisions this machine runs (``f32`` always: Keras runs it without OpenVINO).

    Examples:
        >>> supported()[0]
        'f32'
    """
    caps = cpu_capabilities()
    return [p for p in PRECISIONS if unsupported(p, caps) is None]


def check_supported(precision: str, runtime: str) -> None:
    """Refuse, in one line, a precision this CPU, this install or this ``runtime`` choice cannot run."""
    if precision == "f32":
        return
    if runtime == "keras":
        raise FeatcacheError(f"--precision {precision} runs on OpenVINO; --runtime keras computes in f32 "
                             "(its mixed precision is --compute-dtype)")
    reason = unsupported(precision)
    if reason:
        raise FeatcacheError(reason)


def compile_hint(precision: str) -> str:
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` for ``precision`` (int8's float layers stay f32)."""
    return "bf16" if precision == "bf16" else "f32"


def calibration_rows(n_items: int, size: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """The source rows of the int8 calibration sample: ``size`` of ``n_items`` drawn with ``seed``, in order.

    Examples:
        >>> calibration_rows(5, size=3).tolist()
        [0, 1, 3]
    """
    if n_items <= size:
        return np.arange(n_items)
    return np.sort(np.random.default_rng(seed).choice(n_items, size, replace=False))


def calibration_record(items, size: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> dict:
    """What the cache key records of the calibration sample: its size, seed, and a digest of its items.

    The digest covers the sampled items' ids; with the source's fingerprint
    (also in the key, and covering every image's content) it pins the very
    images the graph was calibrated on.
    """
    return calibration_sample(items, size, seed)[0]


def calibration_sample(items, size: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
                       ) -> tuple[dict, tuple[str, ...]]:
    """``(record, ids)``: :func:`calibration_record` and the ids of the images it names, in order."""
    ids = tuple(items[r].id for r in calibration_rows(len(items), size, seed).tolist())
    return record_of(ids, seed), ids


def record_of(ids, seed: int = CALIBRATION_SEED) -> dict:
    """The key's record of a calibration sample of these item ``ids`` drawn with ``seed``."""
    digest = hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()
    return {"images": len(ids), "seed": int(seed), "digest": digest}


def quantize(ov_model, images: np.ndarray):
    """The OpenVINO model quantized to int8 by NNCF on ``images`` (uint8, the graph's input), one a sample.

    NNCF's defaults (the performance preset: symmetric weights and
    activations, min-max ranges, fast bias correction) are deterministic:
    the same images give the same weights, byte for byte, and the same topology.
    """
    import contextlib
    import io
    import logging

    import nncf

    data = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    logger, level = logging.getLogger("nncf"), logging.getLogger("nncf").level
    logger.setLevel(logging.WARNING)
    try:  # NNCF's progress bars go to rich's console, on stdout: featcache's stdout is its tables
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(ov_model, data, subset_size=len(images))
    finally:
        logger.setLevel(level)
