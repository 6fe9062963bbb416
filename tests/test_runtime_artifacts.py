"""``gpuseg.runtime.artifacts``: one save/load for every model, and every check a loader makes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gpuseg.runtime import artifacts
from gpuseg.runtime.artifacts import ArtifactError, artifact_files, load_artifact, save_artifact
from gpuseg.runtime.errors import UserInputError

KIND = "gpuseg.Test"


def _save(tmp_path, **extra):
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
               "mean": np.linspace(0, 1, 4), "counts": np.arange(3, dtype=np.int64),
               "mask": np.array([True, False])}
    meta = {"params": {"k": 3, "tol": 0.1, "name": "x"}, "inertia": 1.5, "names": ("a", "b"),
            "np": np.float32(2.5), **extra}
    return save_artifact(tmp_path / "model", tensors, meta, kind=KIND, version=2), tensors


def _reseal(files):
    """Recompute the recorded checksum over the files as they are now (a deliberate forgery)."""
    doc = json.loads(files.meta.read_text())
    doc["checksum"]["sha256"] = artifacts._checksum(files.tensors, {}, doc)
    files.meta.write_text(json.dumps(doc))


def test_round_trip_torch_numpy_and_memory_map(tmp_path):
    files, tensors = _save(tmp_path)
    assert files == artifact_files(tmp_path / "model.json") == artifact_files(tmp_path / "model.safetensors")
    assert files.tensors.name == "model.safetensors" and files.meta.name == "model.json"
    art = load_artifact(tmp_path / "model", kind=KIND, version=2,
                        expected_shapes={"w": (3, None), "mean": (4,)})
    assert isinstance(art.tensors["w"], torch.Tensor) and art.tensors["counts"].dtype == torch.int64
    for name, value in tensors.items():
        np.testing.assert_array_equal(np.asarray(art.tensors[name]), np.asarray(value))
    meta = art.meta
    assert meta["kind"] == KIND and meta["schema_version"] == 2 and "torch" in meta["versions"]
    assert meta["params"] == {"k": 3, "tol": 0.1, "name": "x"} and meta["names"] == ["a", "b"]
    assert meta["np"] == 2.5 and len(meta["checksum"]["sha256"]) == 64
    mapped = load_artifact(files, kind=KIND, version=2, numpy=True, mmap=True).tensors
    assert isinstance(mapped["w"], np.memmap) and not mapped["w"].flags.writeable
    np.testing.assert_array_equal(mapped["mean"], tensors["mean"])
    plain = load_artifact(files, kind=KIND, version=2, numpy=True).tensors
    assert isinstance(plain["w"], np.ndarray) and plain["mask"].dtype == bool


def test_streamed_file_is_the_one_safetensors_writes(tmp_path, monkeypatch):
    """Our block-by-block writer and safetensors' own give files that read back the same."""
    monkeypatch.setattr(artifacts, "_WRITE_BLOCK", 7)  # many blocks, none aligned to an element
    tensors = {"b": torch.arange(30, dtype=torch.bfloat16).reshape(5, 6), "a": np.random.default_rng(0).random((9, 3)),
               "empty": np.zeros((0, 4), np.float32), "flag": np.array([True, False, True]),
               "f16": np.arange(5, dtype=np.float16), "scalar": torch.tensor(3, dtype=torch.int32)}
    ours = tmp_path / "ours.safetensors"
    artifacts._write_safetensors(ours, tensors, KIND, 1)
    theirs = tmp_path / "theirs.safetensors"
    save_file({k: torch.as_tensor(v) for k, v in tensors.items()}, str(theirs))
    read_ours, read_theirs = load_file(str(ours)), load_file(str(theirs))
    assert read_ours.keys() == read_theirs.keys() == tensors.keys()
    for name in tensors:
        assert read_ours[name].dtype == read_theirs[name].dtype and torch.equal(read_ours[name], read_theirs[name])
    header, start = artifacts._header(ours)
    assert start % 8 == 0 and ours.stat().st_size == start + max(e for _, e in (i["data_offsets"] for i in header.values()))


def test_nan_poked_tensor_is_rejected_even_with_a_valid_file(tmp_path):
    files, _ = _save(tmp_path)
    poked = load_file(str(files.tensors))
    poked["w"][1, 2] = float("nan")
    save_file(poked, str(files.tensors))  # a well-formed safetensors file with other bytes
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        load_artifact(files, kind=KIND, version=2)
    _reseal(files)  # even when the checksum is recomputed to match, the NaN is caught
    with pytest.raises(ArtifactError, match="tensor 'w' holds NaN or infinity"):
        load_artifact(files, kind=KIND, version=2)
    with pytest.raises(ArtifactError, match="tensor 'w' holds NaN or infinity"):
        load_artifact(files, kind=KIND, version=2, numpy=True, mmap=True)


def test_edited_json_is_rejected(tmp_path):
    files, _ = _save(tmp_path)
    doc = json.loads(files.meta.read_text())
    doc["params"]["k"] = 4
    files.meta.write_text(json.dumps(doc, indent=2))
    with pytest.raises(ArtifactError, match="SHA-256 differs") as info:
        load_artifact(files, kind=KIND, version=2, remedy="re-run `gpuseg test`")
    assert isinstance(info.value, UserInputError) and isinstance(info.value, ValueError)
    assert str(files.meta) in str(info.value) and "re-run `gpuseg test`" in str(info.value)
    # formatting alone (indentation, key order) is not an edit
    doc["params"]["k"] = 3
    files.meta.write_text(json.dumps(dict(reversed(list(doc.items())))))
    load_artifact(files, kind=KIND, version=2)


def test_wrong_kind_version_and_older_files_are_rejected(tmp_path):
    files, _ = _save(tmp_path)
    with pytest.raises(ArtifactError, match="holds a 'gpuseg.Test' artifact, not a 'gpuseg.Other'"):
        load_artifact(files, kind="gpuseg.Other", version=2)
    with pytest.raises(ArtifactError, match="has schema_version 2; this gpuseg reads gpuseg.Test schema_version 3"):
        load_artifact(files, kind=KIND, version=3)
    files.meta.write_text(json.dumps({"schema_version": 2, "estimator": "x"}))
    with pytest.raises(ArtifactError, match="no 'kind' entry: an older gpuseg"):
        load_artifact(files, kind=KIND, version=2)
    files.meta.write_text("{not json")
    with pytest.raises(ArtifactError, match="not a readable JSON file"):
        load_artifact(files, kind=KIND, version=2)


def test_missing_truncated_and_unreadable_files_are_rejected(tmp_path):
    with pytest.raises(ArtifactError, match="'.*missing.json' does not exist; save it again"):
        load_artifact(tmp_path / "missing", kind=KIND, version=2)
    files, _ = _save(tmp_path)
    whole = files.tensors.read_bytes()
    files.tensors.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        load_artifact(files, kind=KIND, version=2)
    _reseal(files)  # a truncated file whose checksum matches still fails as unreadable, not a traceback
    for mmap in (False, True):
        with pytest.raises(ArtifactError, match="cannot be read as safetensors"):
            load_artifact(files, kind=KIND, version=2, numpy=mmap, mmap=mmap)
    files.tensors.unlink()
    with pytest.raises(ArtifactError, match="model.safetensors' does not exist"):
        load_artifact(files, kind=KIND, version=2)


def test_shapes_and_side_files(tmp_path):
    side = tmp_path / "extra.bin"
    side.write_bytes(b"0123456789")
    files = save_artifact(tmp_path / "a", {"x": np.zeros((2, 3), np.float32)}, {"n": 2}, kind=KIND, version=1,
                          side_files=[side])
    art = load_artifact(files, kind=KIND, version=1, expected_shapes=lambda m: {"x": (m["n"], 3)})
    assert art.side_files == {"extra.bin": side}
    with pytest.raises(ArtifactError, match=r"tensor 'x' has shape \(2, 3\), expected \(2, 4\)"):
        load_artifact(files, kind=KIND, version=1, expected_shapes={"x": (2, 4)})
    with pytest.raises(ArtifactError, match="has no tensor 'y'"):
        load_artifact(files, kind=KIND, version=1, expected_shapes={"y": (1,)})
    side.write_bytes(b"01234")  # truncated side file
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        load_artifact(files, kind=KIND, version=1)
    side.unlink()
    with pytest.raises(ArtifactError, match="extra.bin' does not exist"):
        load_artifact(files, kind=KIND, version=1)
    with pytest.raises(ValueError, match="reserved keys"):
        save_artifact(tmp_path / "b", {}, {"kind": "x"}, kind=KIND, version=1)


# ------------------------------------------------------------------ the five estimators on it


def test_kmeans_round_trip_and_poked_centres(tmp_path):
    from gpuseg.cluster import MiniBatchKMeans

    X = np.random.default_rng(0).normal(size=(400, 3)).astype(np.float32)
    m = MiniBatchKMeans(4, random_state=0, device="cpu").fit(X)
    m.save(tmp_path / "km")
    np.testing.assert_array_equal(MiniBatchKMeans.load(tmp_path / "km", device="cpu").predict(X), m.predict(X))
    poked = load_file(str(tmp_path / "km.safetensors"))
    poked["cluster_centers"][0, 0] = float("inf")
    save_file(poked, str(tmp_path / "km.safetensors"))
    with pytest.raises(UserInputError, match="k-means model.*SHA-256 differs.*re-run `gpuseg segment`"):
        MiniBatchKMeans.load(tmp_path / "km")


def test_fusion_churn_and_journey_files_keep_their_names(tmp_path):
    from gpuseg.fusion import BlockFuser
    from gpuseg.value.churn import ChurnModel

    rng = np.random.default_rng(1)
    ids = [f"c{i}" for i in range(60)]
    blocks = {"a": (ids, rng.normal(size=(60, 4))), "b": (ids[10:], rng.normal(size=(50, 3)))}
    fuser = BlockFuser(pca_components=3, device="cpu")
    _, fused = fuser.fit_transform(blocks)
    assert fuser.save(tmp_path / "transform") == tmp_path / "transform.json"
    np.testing.assert_allclose(BlockFuser.load(tmp_path / "transform", device="cpu").transform(blocks)[1], fused,
                               atol=1e-6)
    X, y = rng.normal(size=(80, 3)), (rng.random(80) > 0.5).astype(int)
    churn = ChurnModel(device="cpu").fit(X, y)
    path = churn.save(tmp_path / "churn.safetensors")
    assert path == tmp_path / "churn.safetensors" and (tmp_path / "churn.safetensors.json").exists()
    np.testing.assert_array_equal(ChurnModel.load(path, device="cpu").churn_probability(X), churn.churn_probability(X))
    doc = json.loads((tmp_path / "churn.safetensors.json").read_text())
    doc["params"]["hidden"] = 4
    (tmp_path / "churn.safetensors.json").write_text(json.dumps(doc))
    with pytest.raises(UserInputError, match="churn model.*SHA-256 differs"):
        ChurnModel.load(path)


def test_journey_encoder_load_names_the_job(tmp_path):
    from gpuseg.journey.model import JourneyEncoder

    with pytest.raises(UserInputError, match="journey encoder: '.*enc.json' does not exist; run `gpuseg journeys`"):
        JourneyEncoder.load(tmp_path / "enc")


def _index(tmp_path, backend):
    from gpuseg.lookalike import LookalikeIndex

    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 8)).astype(np.float32)
    ids = [f"c{i}" for i in range(600)]
    index = LookalikeIndex(backend, "ip", device="cpu", **({"nlist": 8} if backend == "ivf_flat" else {}))
    index.build(X, ids).save(tmp_path / "idx")
    return index, X


@pytest.mark.parametrize("victim", ["index.safetensors", "ids.parquet", "index.faiss", "index.json"])
def test_truncated_or_corrupt_index_cache_is_a_clear_error(tmp_path, victim):
    from gpuseg.lookalike import LookalikeIndex

    index, X = _index(tmp_path, "ivf_flat")
    loaded = LookalikeIndex.load(tmp_path / "idx", device="cpu")
    np.testing.assert_array_equal(loaded.search(X[:5], 10)[1], index.search(X[:5], 10)[1])
    path = tmp_path / "idx" / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserInputError, match="lookalike index.*lookalike.index.rebuild=true") as info:
        LookalikeIndex.load(tmp_path / "idx", device="cpu")
    assert info.value.config_key == "lookalike.index.rebuild"


def test_index_written_by_an_older_gpuseg_says_rebuild(tmp_path):
    from gpuseg.lookalike import LookalikeIndex

    folder = tmp_path / "old"
    folder.mkdir()
    np.save(folder / "vectors.npy", np.zeros((3, 2), np.float32))
    (folder / "index.json").write_text(json.dumps({"schema_version": 1, "estimator": "LookalikeIndex"}))
    with pytest.raises(UserInputError, match="an older gpuseg.*rebuild it"):
        LookalikeIndex.load(folder)
    # saving over it replaces the old layout
    index, _ = _index(tmp_path, "exact")
    index.save(folder)
    assert not (folder / "vectors.npy").exists()
    assert LookalikeIndex.load(folder, device="cpu").ntotal == 600
