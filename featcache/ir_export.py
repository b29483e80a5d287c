"""The deployable OpenVINO IR beside an exported ``.keras`` model (``featcache export --format openvino``).

Its pair (``NAME.xml`` + ``NAME.bin``) and a sidecar recording the sha256 of
the ``.keras``, ``.xml`` and ``.bin`` are one unit: committed so that a kill
never leaves a pair that predicts otherwise, and replaced only when featcache
provably wrote what is there. The conversion itself is stage one's
(:func:`featcache.runtimes.export_graph`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .files import atomic_write_bytes, fsync_dir, fsync_file, pause_point, remove_stale_temporaries, sha256_path
from .runtimes import export_graph, openvino_installed


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
    ov_model = export_graph(model, None)
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
