"""fitsnap_uq.io: atomic writes (permissions of an ordinary file, nothing left behind on failure) and JSON
of numpy values."""

import json
import os
import stat

import numpy as np
import pytest

from fitsnap_uq.io import atomic_path, atomic_write, current_umask, json_default


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_follows_the_umask(tmp_path, umask022):
    assert current_umask() == 0o022
    path = atomic_write(tmp_path / "sub" / "a.txt", "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    assert mode_of(path) == 0o644  # as open(path, "w") would make it, not mkstemp's 0600
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert mode_of(plain) == mode_of(path)


def test_atomic_write_other_umask_bytes_and_writer(tmp_path):
    old = os.umask(0o077)
    try:
        a = atomic_write(tmp_path / "a.bin", b"\x00\x01")
        b = atomic_write(tmp_path / "b.npz", lambda fh: np.savez(fh, x=np.arange(3)))
    finally:
        os.umask(old)
    assert a.read_bytes() == b"\x00\x01" and mode_of(a) == 0o600
    assert np.load(b)["x"].tolist() == [0, 1, 2]
    c = atomic_write(tmp_path / "c.txt", "c", mode=0o640)
    assert mode_of(c) == 0o640


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = atomic_write(tmp_path / "keep.txt", "good")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # no temp file left


def test_atomic_path_renames_on_success_only(tmp_path, umask022):
    target = tmp_path / "tool"
    with atomic_path(target, mode=0o755) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tool.")
        tmp.write_text("#!/bin/sh\n")
    assert mode_of(target) == 0o755 and target.read_text() == "#!/bin/sh\n"
    with pytest.raises(ValueError), atomic_path(tmp_path / "never") as tmp:
        tmp.write_text("x")
        raise ValueError
    assert not (tmp_path / "never").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tool"]


def test_json_default():
    text = json.dumps({"a": np.float64(1.5), "b": np.arange(2), "c": np.int32(3)}, default=json_default)
    assert json.loads(text) == {"a": 1.5, "b": [0, 1], "c": 3}
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        json.dumps(object(), default=json_default)
