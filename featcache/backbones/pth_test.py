"""The restricted .pth reader: real torch files load; anything but tensors is refused."""

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ..errors import BackboneError
from .pth import LEGACY_MAGIC, UnsafePickleError, load_state_dict

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_files_load_exactly(fmt):
    expected = np.load(FIXTURES / "tensors_expected.npz")
    sd = load_state_dict(FIXTURES / f"tensors_{fmt}.pth")
    assert list(sd) == ["conv.weight", "bn.running_var", "transposed", "sliced", "half", "bf16", "steps", "param"]
    for k in expected.files:
        got = sd[k].astype(np.float32) if k == "bf16" else sd[k]
        assert got.shape == expected[k].shape, k
        np.testing.assert_array_equal(got, expected[k], err_msg=k)
    assert sd["half"].dtype == np.float16 and sd["steps"].dtype == np.int64
    assert sd["transposed"].flags["C_CONTIGUOUS"]  # strides resolved into an owned copy


class _Boom:
    """Unpickling this calls os.system: what a hostile .pth looks like."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_zip(path, marker):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weight": _Boom(marker)}, protocol=2))
        zf.writestr("archive/version", "3\n")


def _hostile_legacy(path, marker):
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"weight": _Boom(marker)}, f, protocol=2)
        pickle.dump([], f, protocol=2)


@pytest.mark.parametrize("make", [_hostile_zip, _hostile_legacy])
def test_pickled_code_is_refused_and_never_runs(tmp_path, make):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    make(path, marker)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        load_state_dict(path)
    assert not marker.exists()
    # the payload is live: plain pickle would have run the command
    pickle.loads(pickle.dumps(_Boom(marker)))
    assert marker.exists()


def test_damaged_files_give_clear_errors(tmp_path):
    data = (FIXTURES / "tensors_legacy.pth").read_bytes()
    short = tmp_path / "short.pth"
    short.write_bytes(data[: len(data) - 40])
    with pytest.raises(BackboneError, match="truncated"):
        load_state_dict(short)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all" * 10)
    with pytest.raises(BackboneError):
        load_state_dict(junk)
    notpth = tmp_path / "other.zip"
    with zipfile.ZipFile(notpth, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(BackboneError, match="no data.pkl"):
        load_state_dict(notpth)
    buf = io.BytesIO()
    pickle.dump([1, 2, 3], buf)
    plain = tmp_path / "list.pth"
    plain.write_bytes(buf.getvalue())
    with pytest.raises(BackboneError):
        load_state_dict(plain)
