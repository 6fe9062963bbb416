"""A job refuses upstream outputs that are not the set gpuseg published, or that mix two upstream runs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import synthetic_project

from gpuseg.jobs import features, fuse, segment, validate
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.publish import RECORD, read_record


def test_every_published_folder_records_its_files_and_the_upstream_runs_it_read(tmp_path):
    work = tmp_path / "work"
    synthetic_project(work, 300)
    validated, feats = read_record(work / "validated"), read_record(work / "features")
    assert validated["job"] == "validate" and validated["lineage"] == {}
    assert feats["lineage"] == {"validate": {"folder": "validated", "id": validated["id"]}}
    sizes = {p.relative_to(work / "features").as_posix(): p.stat().st_size
             for p in (work / "features").rglob("*") if p.is_file() and p.name != RECORD}
    assert feats["files"] == sizes


def test_outputs_made_from_an_earlier_upstream_run_are_refused_naming_the_job_to_rerun(tmp_path):
    work = tmp_path / "work"
    cfg = synthetic_project(work, 300)
    fuse.run(cfg("fuse"))
    validate.run(cfg("validate"))  # new validated set: features (and fuse) were made from the old one
    with pytest.raises(UserInputError, match=r"fuse outputs .* earlier `gpuseg validate` run.*"
                                             r"re-run `gpuseg features`, then `gpuseg fuse` \(or `gpuseg run`\)"):
        segment.run(cfg("segment", "segment.n_clusters=3"))
    assert not (work / "segment").exists()  # nothing published from the mixed set
    with pytest.raises(UserInputError, match=r"features outputs .* re-run `gpuseg features`, then `gpuseg fuse`"):
        fuse.run(cfg("fuse"))  # fuse itself reads the stale features too
    features.run(cfg("features"))
    with pytest.raises(UserInputError, match=r"fuse outputs .* earlier `gpuseg features` run.*re-run `gpuseg fuse` \("):
        segment.run(cfg("segment", "segment.n_clusters=3"))
    fuse.run(cfg("fuse"))
    result = segment.run(cfg("segment", "segment.n_clusters=3"))
    assert pq.read_table(result["segments_path"]).num_rows == 300


@pytest.mark.parametrize("damage", ["delete", "truncate", "swap"])
def test_a_published_file_missing_truncated_or_swapped_is_refused(tmp_path, damage):
    work = tmp_path / "work"
    cfg = synthetic_project(work, 300)
    matrix = work / "features" / "matrix.parquet"
    if damage == "delete":
        matrix.unlink()
    elif damage == "truncate":
        matrix.write_bytes(matrix.read_bytes()[:-100])
    else:  # another run's file put in its place
        other = tmp_path / "other"
        synthetic_project(other, 200)
        matrix.write_bytes((other / "features" / "matrix.parquet").read_bytes())
    with pytest.raises(UserInputError, match=r"features outputs .* not the set gpuseg published: 'matrix.parquet'.*"
                                             r"re-run `gpuseg features`"):
        fuse.run(cfg("fuse"))


def test_an_unreadable_publish_record_is_a_message(tmp_path):
    work = tmp_path / "work"
    cfg = synthetic_project(work, 300)
    (work / "features" / RECORD).write_text("{not json")
    with pytest.raises(UserInputError, match=r"publish record .* cannot be read"):
        fuse.run(cfg("fuse"))
    (work / "features" / RECORD).write_text(json.dumps({"job": "features"}))
    with pytest.raises(UserInputError, match=r"not one gpuseg wrote"):
        fuse.run(cfg("fuse"))
