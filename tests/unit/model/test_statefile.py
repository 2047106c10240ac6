"""State files: named components round trip, saves are atomic, and a bad file fails with StateFileError."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model import statefile
from model.statefile import FORMAT_VERSION, STATE_JSON, StateFileError, load_state, save_state

ROOT = Path(__file__).resolve().parents[3]


def components(seed: int) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    return {
        "context": (
            {"version": 1, "keys": [{"t": ["a", None]}, "b", 3], "alpha": 0.05, "seed": seed},
            {
                "times": rng.integers(0, 2**40, 1000, dtype=np.int64),
                "mean": rng.normal(size=17),
                "flags": rng.random(5) < 0.5,
            },
        ),
        "detector.series": ({"n": seed}, {"grid": rng.normal(size=(3, 4)).astype(np.float32)}),
        "empty": ({}, {"nothing": np.zeros(0, dtype=np.int64)}),
    }


def assert_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, (values, arrays) in want.items():
        got_values, got_arrays = got[name]
        assert got_values == values
        assert got_arrays.keys() == arrays.keys()
        for key, array in arrays.items():
            assert got_arrays[key].dtype == array.dtype and got_arrays[key].shape == array.shape
            assert np.array_equal(got_arrays[key], array)


def npz_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.suffix == ".npz")


def test_round_trip_and_replace(tmp_path):
    path = tmp_path / "state"
    save_state(path, components(1))
    assert_equal(load_state(path), components(1))
    save_state(path, components(2))
    assert_equal(load_state(path), components(2))
    assert len(npz_files(path)) == 1  # the superseded arrays file was removed
    document = json.loads((path / STATE_JSON).read_text())
    assert document["version"] == FORMAT_VERSION and set(document["components"]) == set(components(2))


def test_missing_state_is_none(tmp_path):
    assert load_state(tmp_path / "never-saved") is None
    (tmp_path / "empty").mkdir()
    assert load_state(tmp_path / "empty") is None


def test_interrupted_save_leaves_old_state(tmp_path, monkeypatch):
    """The new arrays file and the temp JSON are written, then the rename fails: the old state still loads,
    and the next save cleans up what the failed one left."""
    path = tmp_path / "state"
    save_state(path, components(1))

    def fail(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(statefile.os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        save_state(path, components(2))
    assert len(npz_files(path)) == 2 and any(p.name.startswith(".state.json.tmp-") for p in path.iterdir())
    assert_equal(load_state(path), components(1))
    monkeypatch.undo()
    save_state(path, components(3))
    assert_equal(load_state(path), components(3))
    assert len(npz_files(path)) == 1 and not any(p.name.startswith(".state.json.tmp") for p in path.iterdir())


def test_process_killed_before_rename_leaves_old_state(tmp_path):
    """A real crash (os._exit, no cleanup runs) between the temp write and the rename."""
    path = tmp_path / "state"
    save_state(path, components(1))
    code = f"""
import os
from pathlib import Path
from model import statefile
from tests.unit.model.test_statefile import components
statefile.os.replace = lambda src, dst: os._exit(9)
statefile.save_state(Path({str(path)!r}), components(2))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert result.returncode == 9
    assert_equal(load_state(path), components(1))


def test_corrupt_and_newer_files_raise(tmp_path):
    path = tmp_path / "state"
    save_state(path, components(1))
    good = (path / STATE_JSON).read_text()
    document = json.loads(good)

    def load_with(text: str) -> None:
        (path / STATE_JSON).write_text(text)
        load_state(path)

    with pytest.raises(StateFileError, match="newer"):
        load_with(json.dumps({**document, "version": FORMAT_VERSION + 1}))
    with pytest.raises(StateFileError, match="not valid JSON"):
        load_with(good[: len(good) // 2])
    with pytest.raises(StateFileError, match="not an otad state"):
        load_with(json.dumps({"version": 1}))
    with pytest.raises(StateFileError, match="invalid format version"):
        load_with(json.dumps({**document, "version": "1"}))
    with pytest.raises(StateFileError, match="malformed"):
        load_with(json.dumps({**document, "arrays_file": "../elsewhere.npz"}))
    with pytest.raises(StateFileError, match="component 'context'"):
        load_with(json.dumps({**document, "components": {"context": {"values": {}}}}))
    (path / STATE_JSON).write_text(good)
    npz = path / document["arrays_file"]
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(StateFileError, match="checksum"):
        load_state(path)
    npz.unlink()
    with pytest.raises(StateFileError, match="missing"):
        load_state(path)
    assert issubclass(StateFileError, ValueError)


def test_unreadable_arrays_raise(tmp_path):
    """An arrays file whose checksum matches but is not an npz (written by hand): still StateFileError."""
    path = tmp_path / "state"
    save_state(path, components(1))
    document = json.loads((path / STATE_JSON).read_text())
    npz = path / document["arrays_file"]
    npz.write_bytes(b"not a zip")
    document["arrays_sha256"] = hashlib.sha256(b"not a zip").hexdigest()
    (path / STATE_JSON).write_text(json.dumps(document))
    with pytest.raises(StateFileError, match="unreadable"):
        load_state(path)


def test_refuses_what_it_cannot_store_safely(tmp_path):
    with pytest.raises(TypeError, match="Python objects"):
        save_state(tmp_path / "s", {"c": ({}, {"x": np.array([{"a": 1}], dtype=object)})})
    with pytest.raises(ValueError):
        save_state(tmp_path / "s", {"c": ({"x": float("nan")}, {})})
    assert load_state(tmp_path / "s") is None and not list((tmp_path / "s").iterdir())  # nothing written
