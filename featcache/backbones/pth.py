"""Read PyTorch ``.pth`` state dicts with numpy alone, refusing anything but tensors.

``torch.load`` runs arbitrary pickled code. This reader's unpickler admits
only the handful of globals a state dict needs (OrderedDict, the tensor
rebuild functions and the typed storage classes) and refuses everything else
before it is called, so loading weights never executes code. Both of
PyTorch's formats are read: the zip archive (``torch.save`` since 1.6) and
the legacy sequential-pickle format. torch is not needed.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

from ..errors import BackboneError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}


class UnsafePickleError(BackboneError):
    """The file asks to load something other than tensors."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self):
        return _STORAGE_DTYPES[self.name]


@dataclass
class _StorageRef:
    key: str
    stype: _StorageType
    numel: int | None


@dataclass
class _TensorStub:
    """A tensor waiting for its storage bytes: materialised after unpickling."""

    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorStub(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorStub(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path} is not a plain PyTorch state dict: it asks to load {module}.{name}, "
                "which could run code. Refused; only tensors and dictionaries are read."
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"{self._path}: unexpected persistent object {str(pid)[:60]!r}")
        if len(pid) == 5:  # zip format: ('storage', type, key, location, numel)
            _, stype, key, _location, numel = pid
        elif len(pid) == 6:  # legacy: ('storage', type, key, location, size, view_metadata)
            _, stype, key, _location, numel, view = pid
            if view is not None:
                raise UnsafePickleError(f"{self._path}: storage views are not supported")
        else:
            raise UnsafePickleError(f"{self._path}: malformed storage record")
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError(f"{self._path}: storage of unknown type {stype!r}")
        return _StorageRef(str(key), stype, None if numel is None else int(numel))


def _materialise(obj, storages: dict[str, np.ndarray], path):
    if isinstance(obj, _TensorStub):
        flat = storages[obj.storage.key]
        if not obj.size:
            return np.array(flat[obj.offset])
        itemsize = flat.dtype.itemsize
        needed = obj.offset + sum((s - 1) * st for s, st in zip(obj.size, obj.stride)) + 1
        if any(s == 0 for s in obj.size):
            return np.zeros(obj.size, flat.dtype)
        if needed > flat.size or obj.offset < 0 or any(st < 0 for st in obj.stride):
            raise BackboneError(f"{path}: a tensor points outside its storage (file damaged?)")
        view = np.lib.stride_tricks.as_strided(flat[obj.offset:], shape=obj.size,
                                               strides=[st * itemsize for st in obj.stride])
        return np.array(view, order="C")  # copy: own, contiguous memory
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, storages, path)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages, path) for v in obj)
    return obj


def _as_array(data: bytes, stype: _StorageType) -> np.ndarray:
    if stype.dtype == "bfloat16":
        raw = np.frombuffer(data, np.uint16).astype(np.uint32) << 16
        return raw.view(np.float32)
    return np.frombuffer(data, stype.dtype)


def _collect_refs(obj, out):
    if isinstance(obj, _TensorStub):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_refs(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_refs(v, out)
    return out


def _load_zip(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise BackboneError(f"{path} is a zip file but not a PyTorch archive (no data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path).load()
        storages = {}
        for key, ref in _collect_refs(obj, {}).items():
            try:
                data = zf.read(f"{prefix}data/{key}")
            except KeyError:
                raise BackboneError(f"{path}: storage {key} is missing from the archive") from None
            storages[key] = _as_array(data, ref.stype)
    return _materialise(obj, storages, path)


def _load_legacy(path) -> dict:
    with open(path, "rb") as f:
        magic = _RestrictedUnpickler(f, path).load()
        if magic != LEGACY_MAGIC:
            raise BackboneError(f"{path} is not a PyTorch file (bad magic number)")
        protocol = _RestrictedUnpickler(f, path).load()
        if protocol != 1001:
            raise BackboneError(f"{path}: unsupported PyTorch legacy protocol {protocol}")
        _RestrictedUnpickler(f, path).load()  # sys_info
        obj = _RestrictedUnpickler(f, path).load()
        keys = _RestrictedUnpickler(f, path).load()
        refs = _collect_refs(obj, {})
        storages = {}
        for key in keys:
            ref = refs.get(str(key))
            head = f.read(8)
            if len(head) != 8:
                raise BackboneError(f"{path} is truncated (storage {key})")
            (numel,) = struct.unpack("<q", head)
            stype = ref.stype if ref else _StorageType("ByteStorage")
            itemsize = 2 if stype.dtype == "bfloat16" else np.dtype(stype.dtype).itemsize
            data = f.read(numel * itemsize)
            if len(data) != numel * itemsize:
                raise BackboneError(f"{path} is truncated (storage {key})")
            storages[str(key)] = _as_array(data, stype)
    return _materialise(obj, storages, path)


def load_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Load a ``.pth`` state dict as ``{name: numpy array}`` without torch and without running code."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path)
        else:
            obj = _load_legacy(path)
    except BackboneError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error) as exc:
        raise BackboneError(f"{path} is not a readable PyTorch state dict: {exc}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a flat state dict of tensors")
    return obj
