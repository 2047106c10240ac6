"""Online state on disk: named components, each JSON-safe values plus named numpy arrays, saved atomically.

A state is a directory holding `state.json` (format version, every component's values, the name and SHA-256 of
its arrays file) and one `arrays-<token>.npz`. A save writes a new, uniquely named .npz, then replaces
`state.json` with a temp file + fsync + rename: the JSON is the commit point, so a crash at any moment leaves
either the old state or the new one loadable, never a mix. The superseded .npz is removed after the commit.
Nothing is pickled: arrays are loaded with `allow_pickle=False` and object arrays are refused at save time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import secrets
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "otad-state"
FORMAT_VERSION = 1
STATE_JSON = "state.json"
_ARRAYS_PREFIX = "arrays-"
_TMP_PREFIX = ".state.json.tmp-"
_LOCK = ".lock"

# One component's state: JSON-safe values and named arrays.
Component = tuple[dict[str, Any], dict[str, np.ndarray]]


class StateFileError(ValueError):
    """A state file that cannot be read back: corrupt, incomplete, or written by a newer format."""


def save_state(
    path: Path, components: Mapping[str, tuple[Mapping[str, Any], Mapping[str, np.ndarray]]]
) -> None:
    """Write every component's (values, arrays) into the state directory `path` (created when missing).

    Replaces the previous state atomically. One writer at a time: concurrent saves are serialised by a lock.
    Raises TypeError/ValueError when values are not JSON-safe or an array holds Python objects.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    members: dict[str, np.ndarray] = {}
    manifest: dict[str, Any] = {}
    for name, (values, arrays) in components.items():
        refs = {}
        for array_name, array in arrays.items():
            a = np.asarray(array)
            if a.dtype.hasobject:
                raise TypeError(f"state {name!r}: array {array_name!r} holds Python objects (never pickled)")
            refs[str(array_name)] = member = f"a{len(members)}"
            members[member] = a
        manifest[str(name)] = {"values": dict(values), "arrays": refs}
    # Serialised before anything is written, so values that are not JSON-safe fail without leaving files.
    manifest_text = json.dumps(manifest, allow_nan=False, separators=(",", ":"))
    with _locked(path):
        token = secrets.token_hex(8)
        arrays_file = f"{_ARRAYS_PREFIX}{token}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **members)  # uncompressed: a stop must not wait on zlib
        data = buffer.getvalue()
        _write_synced(path / arrays_file, data)
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "arrays_file": arrays_file,
            "arrays_sha256": hashlib.sha256(data).hexdigest(),
            "arrays_bytes": len(data),
        }
        text = (json.dumps(header, separators=(",", ":"))[:-1] + f',"components":{manifest_text}}}').encode()
        tmp = path / f"{_TMP_PREFIX}{token}"
        _write_synced(tmp, text)
        os.replace(tmp, path / STATE_JSON)  # the commit point
        _fsync_dir(path)
        _remove_stale(path, keep=arrays_file)


def load_state(path: Path) -> dict[str, Component] | None:
    """Every component's (values, arrays) from the state directory `path`; None when no state was saved.

    Raises StateFileError when the state is corrupt, incomplete or of a newer format version.
    """
    json_path = Path(path) / STATE_JSON
    with _locked(Path(path), shared=True):
        try:
            text = json_path.read_bytes()
        except FileNotFoundError:
            return None
        document = _parse(json_path, text)
        arrays_path = Path(path) / document["arrays_file"]
        try:
            data = arrays_path.read_bytes()
        except FileNotFoundError:
            raise StateFileError(f"{json_path}: its arrays file {arrays_path.name} is missing") from None
    if hashlib.sha256(data).hexdigest() != document["arrays_sha256"]:
        raise StateFileError(f"{arrays_path}: checksum does not match {json_path} (corrupt or replaced)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            members = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise StateFileError(f"{arrays_path}: unreadable arrays ({e})") from e
    out: dict[str, Component] = {}
    for name, entry in document["components"].items():
        try:
            values, refs = entry["values"], entry["arrays"]
            out[name] = (dict(values), {array_name: members[m] for array_name, m in refs.items()})
        except (KeyError, TypeError, AttributeError) as e:
            raise StateFileError(f"{json_path}: component {name!r} is malformed ({e!r})") from e
    return out


def _parse(json_path: Path, text: bytes) -> dict[str, Any]:
    """The state document, checked for format, version and the fields a load needs."""
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFileError(f"{json_path}: not valid JSON ({e})") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateFileError(f"{json_path}: not an otad state file")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateFileError(f"{json_path}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise StateFileError(
            f"{json_path}: format version {version} is newer than this build reads ({FORMAT_VERSION})"
        )
    arrays_file = document.get("arrays_file")
    if (
        not isinstance(arrays_file, str)
        or not arrays_file.startswith(_ARRAYS_PREFIX)
        or "/" in arrays_file
        or not isinstance(document.get("arrays_sha256"), str)
        or not isinstance(document.get("components"), dict)
    ):
        raise StateFileError(f"{json_path}: missing or malformed fields")
    return document


def _write_synced(path: Path, data: bytes) -> None:
    """Write a new file and fsync it, so the rename that publishes it never exposes a partial file."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the directory's entries (the rename) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale(path: Path, keep: str) -> None:
    """Remove superseded arrays files and temp files a crashed save left behind (best effort)."""
    for entry in path.iterdir():
        stale = entry.name.startswith(_TMP_PREFIX) or (
            entry.name.startswith(_ARRAYS_PREFIX) and entry.name.endswith(".npz") and entry.name != keep
        )
        if stale:
            with contextlib.suppress(OSError):
                entry.unlink()


@contextlib.contextmanager
def _locked(path: Path, shared: bool = False) -> Iterator[None]:
    """Lock the state directory: exclusive for a save (its cleanup must not remove another save's file),
    shared for a load (a save must not remove the arrays file being read). No lock file yet: nothing to guard."""
    try:
        fd = os.open(path / _LOCK, os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        if not shared:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
