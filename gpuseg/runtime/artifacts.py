"""Saved models and transforms: ``<stem>.safetensors`` (numbers) + ``<stem>.json`` (everything else).

The one home of artifact save/load. :func:`save_artifact` writes the pair atomically (temporary
file, then rename), with the artifact's kind and format version, the library versions, and one
SHA-256 over the tensor file, any side files (e.g. a faiss index) and the canonical JSON of the
metadata. :func:`load_artifact` makes every check a loader needs, in this order, each failure a
:class:`ArtifactError` (a :class:`~gpuseg.runtime.errors.UserInputError`: the CLI prints it) that
names the file and what to re-run:

1. the files are present and the JSON parses;
2. kind and format version are the ones the caller reads;
3. the checksum matches (an edited JSON, a swapped, truncated or re-written tensor file, a side
   file from another save are all caught here);
4. the tensor file parses and holds every expected tensor, each finite (NaN or infinity), each
   of the shape the caller expects.

Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpuseg.runtime.io import atomic_path, write_json
from gpuseg.runtime.manifest import library_versions
from gpuseg.runtime.validation import InputDataError

PathLike = str | os.PathLike
#: tensor name -> shape, ``None`` for a dimension of any size
Shapes = Mapping[str, Sequence[int | None]]
#: keys of the JSON document that belong to this module, not to the caller's metadata
RESERVED = ("kind", "schema_version", "versions", "checksum")
_SUFFIXES = (".json", ".safetensors")
_BLOCK = 1 << 20
#: safetensors dtype -> numpy dtype, for memory-mapped loads
_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                 "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
                 "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}


class ArtifactError(InputDataError):
    """A saved artifact is missing, foreign, of another version, altered or unusable."""


@dataclass(frozen=True)
class ArtifactFiles:
    """The two files of an artifact (``tensors``: safetensors, ``meta``: JSON)."""

    tensors: Path
    meta: Path


@dataclass
class Artifact:
    """What :func:`load_artifact` returns."""

    tensors: dict[str, Any]
    """name -> ``torch.Tensor`` (or ndarray / read-only memory map with ``numpy=True``)."""
    meta: dict[str, Any]
    """The whole JSON document: the caller's metadata plus ``kind``, ``schema_version``,
    ``versions`` and ``checksum``."""
    files: ArtifactFiles
    side_files: dict[str, Path] = field(default_factory=dict)
    """name -> path of each side file saved with the artifact."""


def check_state(state: Mapping[str, Any], *, kind: str, version: int, kind_key: str = "type",
                version_key: str = "format_version") -> None:
    """Refuse a JSON state (a fitted featurizer, transform, vocabulary...) of another kind or version.

    The JSON-only artifacts carry their kind and format version like the safetensors ones do;
    this is the one check their ``from_dict`` make before reading anything else.
    """
    if not isinstance(state, Mapping) or state.get(kind_key) != kind or state.get(version_key) != version:
        got = (state.get(kind_key), state.get(version_key)) if isinstance(state, Mapping) else (type(state).__name__,)
        raise ArtifactError(f"not a {kind} state of format {version}: got {kind_key}/{version_key} {got!r}; "
                            "re-run the job that wrote it")


def artifact_files(path: PathLike | ArtifactFiles) -> ArtifactFiles:
    """The pair for a stem (``model`` -> ``model.safetensors`` + ``model.json``) or either file."""
    if isinstance(path, ArtifactFiles):
        return path
    stem = Path(path)
    if stem.suffix in _SUFFIXES:
        stem = stem.with_suffix("")
    return ArtifactFiles(stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json"))


def save_artifact(path: PathLike | ArtifactFiles, tensors: Mapping[str, torch.Tensor | np.ndarray],
                  meta: Mapping[str, Any], *, kind: str, version: int,
                  side_files: Sequence[PathLike] = ()) -> ArtifactFiles:
    """Write ``tensors`` and ``meta`` as an artifact of ``kind``, format ``version``.

    Parameters
    ----------
    path : path-like or ArtifactFiles
        The stem (or either file name; see :func:`artifact_files`), or both paths explicitly.
    tensors : dict of str -> Tensor or ndarray
        Saved as they are (dtype and shape), on the CPU.
    meta : dict
        JSON-able metadata (numpy scalars and arrays are converted); the keys in
        :data:`RESERVED` are this module's.
    kind, version : str, int
        What the artifact is and the version of its layout; :func:`load_artifact` checks both.
    side_files : sequence of path-like
        Files already written beside the JSON (same folder) that belong to the artifact; their
        bytes join the checksum, so a stale or truncated one is caught at load.

    Returns
    -------
    ArtifactFiles
        The two paths written.
    """
    files = artifact_files(path)
    clash = sorted(set(meta) & set(RESERVED))
    if clash:
        raise ValueError(f"artifact metadata may not use the reserved keys {clash}")
    sides = [Path(p) for p in side_files]
    for p in sides:
        if p.parent.resolve() != files.meta.parent.resolve():
            raise ValueError(f"side file '{p}' must be in the folder of '{files.meta}'")
    doc = {"kind": kind, "schema_version": int(version), **_plain(dict(meta)),
           "versions": library_versions(),
           "checksum": {"tensors": files.tensors.name, "side_files": [p.name for p in sides]}}
    with atomic_path(files.tensors) as tmp:
        _write_safetensors(tmp, tensors, kind, version)
        doc["checksum"]["sha256"] = _checksum(tmp, {p.name: p for p in sides}, doc)
    write_json(files.meta, doc)
    return files


def load_artifact(path: PathLike | ArtifactFiles, *, kind: str, version: int,
                  expected_shapes: Shapes | Callable[[dict[str, Any]], Shapes] | None = None,
                  device: torch.device | str | None = None, numpy: bool = False, mmap: bool = False,
                  what: str | None = None, remedy: str = "save it again",
                  config_key: str | None = None) -> Artifact:
    """Read an artifact written by :func:`save_artifact`, after checking it (see the module doc).

    Parameters
    ----------
    path : path-like or ArtifactFiles
        As for :func:`save_artifact`.
    kind, version : str, int
        What the caller reads.
    expected_shapes : dict of str -> sequence of int or None, or callable, optional
        Tensors that must be present, with their shapes (``None`` for a free dimension); a
        callable gets the metadata (already checked) and returns them.
    device : torch.device or str, optional
        Where the tensors go (CPU when None).
    numpy : bool
        Return numpy arrays instead of tensors.
    mmap : bool
        With ``numpy``: read-only memory maps of the tensor file instead of copies in memory.
    what : str, optional
        Names the artifact in messages (default: ``kind``).
    remedy : str
        What the user should do when the artifact cannot be used, e.g. "re-run `gpuseg segment`".
    config_key : str, optional
        Passed to the error (the config key to change).
    """
    files = artifact_files(path)
    what = what or kind

    def fail(message: str) -> ArtifactError:
        return ArtifactError(f"cannot load the {what}: {message}; {remedy}", config_key=config_key)

    if not files.meta.exists():
        raise fail(f"'{files.meta}' does not exist")
    try:
        doc = json.loads(files.meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"'{files.meta}' is not a readable JSON file ({exc})") from exc
    if not isinstance(doc, dict) or "kind" not in doc:
        raise fail(f"'{files.meta}' is not a gpuseg {kind} artifact (no 'kind' entry: an older "
                   "gpuseg, or another program, wrote it)")
    if doc["kind"] != kind:
        raise fail(f"'{files.meta}' holds a {doc['kind']!r} artifact, not a {kind!r}")
    if doc.get("schema_version") != version:
        raise fail(f"'{files.meta}' has schema_version {doc.get('schema_version')!r}; this gpuseg "
                   f"reads {kind} schema_version {version}")
    check = doc.get("checksum")
    if not isinstance(check, dict) or not isinstance(check.get("sha256"), str):
        raise fail(f"'{files.meta}' records no checksum")
    names = check.get("side_files", [])
    plain_names = isinstance(names, list) and all(
        isinstance(n, str) and n not in ("", "..") and Path(n).name == n for n in names)
    if not plain_names:
        raise fail(f"'{files.meta}' lists side files that are not file names: {names!r}")
    sides = {name: files.meta.with_name(name) for name in names}
    for p in (files.tensors, *sides.values()):
        if not p.exists():
            raise fail(f"'{p}' does not exist")
    if _checksum(files.tensors, sides, doc) != check["sha256"]:
        raise fail(f"'{files.tensors}' does not match '{files.meta}' (SHA-256 differs): a file was "
                   "edited, truncated or comes from another save")
    try:
        tensors = _read_safetensors(files.tensors, device=device, numpy=numpy, mmap=mmap)
    except (OSError, ValueError, RuntimeError, struct.error) as exc:
        raise fail(f"'{files.tensors}' cannot be read as safetensors ({exc})") from exc
    for name, value in tensors.items():
        if not _all_finite(value):
            raise fail(f"'{files.tensors}': tensor {name!r} holds NaN or infinity")
    if callable(expected_shapes):
        expected_shapes = expected_shapes(doc)
    for name, shape in (expected_shapes or {}).items():
        if name not in tensors:
            raise fail(f"'{files.tensors}' has no tensor {name!r}")
        got = tuple(tensors[name].shape)
        if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got, strict=False)):
            want = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
            raise fail(f"'{files.tensors}': tensor {name!r} has shape {got}, expected {want}")
    return Artifact(tensors=tensors, meta=doc, files=files, side_files=sides)


# ---------------------------------------------------------------------------- internals

def _plain(obj: Any) -> Any:
    """``obj`` as the JSON parser gives it back (numpy values converted, tuples as lists, NaN as None)."""
    from gpuseg.runtime.io import _json_default, json_ready

    return json.loads(json.dumps(json_ready(obj), default=_json_default))


def _canonical(doc: Mapping[str, Any]) -> bytes:
    """The metadata the checksum covers: the document less the digest itself, in canonical form."""
    body = dict(doc)
    body["checksum"] = {k: v for k, v in dict(doc.get("checksum") or {}).items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _checksum(tensor_file: Path, sides: Mapping[str, Path], doc: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for name, p in [("", tensor_file), *sorted(sides.items())]:
        h.update(f"{name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as fh:
            while block := fh.read(_BLOCK):
                h.update(block)
    h.update(b"meta\0" + _canonical(doc))
    return h.hexdigest()


#: torch dtype -> safetensors dtype code
_TORCH_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL", **{getattr(torch, f"uint{b}"): f"U{b}" for b in (16, 32, 64)
                                       if hasattr(torch, f"uint{b}")}}
#: bytes written per call: a large tensor is streamed from its own memory, never copied whole
_WRITE_BLOCK = 1 << 26


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor | np.ndarray], kind: str,
                       version: int) -> None:
    """Write a safetensors file block by block from the tensors' own memory.

    The format is an 8-byte little-endian header length, a JSON header (dtype, shape and byte
    offsets per tensor, padded with spaces to 8 bytes) and the raw bytes in header order.
    ``safetensors.save_file`` builds the whole file in memory first: for a lookalike index that
    is one more copy of the matrix at the moment memory is tightest.
    """
    raw, header, offset = [], {}, 0
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, np.ndarray):
            with warnings.catch_warnings():
                # a read-only array (a view of a faiss index's storage) is only read here
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                value = torch.from_numpy(np.ascontiguousarray(value))
        value = value.detach().cpu().contiguous()
        if value.dtype not in _TORCH_CODES:
            raise TypeError(f"tensor {name!r}: dtype {value.dtype} cannot be saved")
        data = value.reshape(-1).view(torch.uint8).numpy() if value.numel() else np.zeros(0, np.uint8)
        header[name] = {"dtype": _TORCH_CODES[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + data.nbytes]}
        raw.append(data)
        offset += data.nbytes
    header["__metadata__"] = {"gpuseg.kind": kind, "gpuseg.schema_version": str(version)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for data in raw:
            for start in range(0, data.nbytes, _WRITE_BLOCK):
                fh.write(memoryview(data[start:start + _WRITE_BLOCK]))


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header (name -> dtype, shape, offsets) and where the data starts."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > os.path.getsize(path) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _read_safetensors(path: Path, *, device, numpy: bool, mmap: bool) -> dict[str, Any]:
    if mmap and numpy:
        header, start = _header(path)
        size = os.path.getsize(path)
        out = {}
        for name, info in header.items():
            dtype = _NUMPY_DTYPES.get(info["dtype"])
            begin, end = info["data_offsets"]
            if dtype is None or start + end > size:
                raise ValueError(f"tensor {name!r} cannot be memory-mapped")
            shape = tuple(info["shape"])
            out[name] = (np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
                         if end > begin else np.zeros(shape, dtype))
        return out
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device=str(device) if device is not None and not numpy else "cpu")
    except SafetensorError as exc:
        raise ValueError(str(exc)) from exc
    return {k: v.numpy() for k, v in tensors.items()} if numpy else tensors


def _all_finite(value: Any, rows: int = 1 << 16) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if not np.issubdtype(value.dtype, np.floating):
        return True
    flat = value.reshape(value.shape[0], -1) if value.ndim > 1 else value.reshape(-1, 1)
    return all(np.isfinite(flat[s:s + rows]).all() for s in range(0, flat.shape[0], rows))

