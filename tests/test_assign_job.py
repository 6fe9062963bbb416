"""``gpuseg assign`` on a small synthetic project: reproduction, a later as_of, hysteresis, ledger."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module

from gpuseg.jobs import assign, features, fuse, generate, journeys, segment, validate
from gpuseg.runtime.errors import UserInputError

OUTPUTS = ("segments.parquet", "transitions.parquet", "movers.parquet", "drift.json")


def _cfg(work: Path, job: str, *overrides: str):
    device = ["device=cpu"] if job in ("journeys", "fuse", "segment", "assign") else []
    with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
        return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false",
                                                   "data.generator.n_customers=400", *device, *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """400 synthetic customers segmented on the fused tabular + journey blocks (as_of 2025-01-01)."""
    work = tmp_path_factory.mktemp("assignproj") / "work"
    generate.run(_cfg(work, "generate"))
    validate.run(_cfg(work, "validate"))
    features.run(_cfg(work, "features"))
    journeys.run(_cfg(work, "journeys", "journey.epochs=1", "journey.hidden_size=16", "journey.out_dim=8"))
    fuse.run(_cfg(work, "fuse", "fuse.blocks.text.enabled=false"))
    segment.run(_cfg(work, "segment", "segment.n_clusters=5", "segment.confidence.n_bootstrap=1"))
    return work


@pytest.fixture
def project(trained, tmp_path):
    """A private copy of the trained project (each test's assign runs see only their own)."""
    work = tmp_path / "work"
    shutil.copytree(trained, work, symlinks=True)
    return work


def _later_snapshot(work: Path, n_new: int = 15) -> Path:
    """Add ``n_new`` customers to the customers file and put their events in an input folder."""
    data = work / "data"
    customers = pq.read_table(data / "customers.parquet")
    new_ids = pa.array([f"new_{i:03d}" for i in range(n_new)])
    extra = customers.slice(0, n_new).set_column(0, "customer_id", new_ids)
    pq.write_table(pa.concat_tables([customers, extra]), data / "customers.parquet")
    events = pq.read_table(data / "events.parquet")
    mine = events.filter(pc.is_in(events["customer_id"], value_set=customers["customer_id"].slice(0, n_new)))
    mapping = dict(zip(customers["customer_id"].slice(0, n_new).to_pylist(), new_ids.to_pylist(), strict=True))
    mine = mine.set_column(mine.column_names.index("customer_id"), "customer_id",
                           pa.array([mapping[c] for c in mine["customer_id"].to_pylist()]))
    inbox = work.parent / "inbox"
    inbox.mkdir()
    pq.write_table(mine, inbox / "events_new.parquet")
    return inbox


def test_assign_on_the_training_snapshot_reproduces_the_training_segments(project):
    result = assign.run(_cfg(project, "assign"))
    out = Path(result["output_dir"])
    assert out == project / "assign" / "2025-01-01"
    got = pq.read_table(out / "segments.parquet")
    want = pq.read_table(project / "segment" / "segments.parquet")
    assert got["customer_id"].to_pylist() == want["customer_id"].to_pylist()
    np.testing.assert_array_equal(got["segment"].to_numpy(), want["segment"].to_numpy())
    np.testing.assert_array_equal(got["macro_segment"].to_numpy(), want["macro_segment"].to_numpy())
    np.testing.assert_allclose(got["confidence"].to_numpy(), want["confidence"].to_numpy(), rtol=1e-6)
    assert got["is_outlier"].to_pylist() == want["is_outlier"].to_pylist()
    assert got["previous_segment"].to_pylist() == want["segment"].to_pylist()
    assert not any(got["changed"].to_pylist())
    trans = pq.read_table(out / "transitions.parquet").to_pylist()
    assert all(t["from"] == t["to"] for t in trans) and sum(t["count"] for t in trans) == got.num_rows
    drift = json.loads((out / "drift.json").read_text())
    assert drift["n_changed"] == 0 and drift["previous"]["source"] == "segment"
    assert max(drift["psi"].values()) < 1e-9 and drift["centre_shift"] is None
    assert all(abs(s["shift"]) < 1e-12 for s in drift["segment_share"])
    assert drift["refit_recommended"] is False
    assert pq.read_table(out / "movers.parquet").num_rows == 0
    # assign wrote only into its own folder
    assert not (project / "validated" / "assign").exists()


def _assign(work: Path, *overrides: str) -> dict:
    return assign.run(_cfg(work, "assign", "data.as_of=2025-02-15", *overrides))


def _bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def test_a_later_as_of_with_new_customers_hysteresis_and_an_input_folder(project, tmp_path):
    inbox = _later_snapshot(project)
    loose = tmp_path / "loose"
    shutil.copytree(project, loose, symlinks=True)
    result = _assign(project, f"assign.input={inbox}", "assign.margin=0", "assign.confirm_runs=null")
    out = Path(result["output_dir"])
    seg = pq.read_table(out / "segments.parquet")
    customers = pq.read_table(project / "data" / "customers.parquet")["customer_id"].to_pylist()
    assert seg["customer_id"].to_pylist() == customers  # every customer of the later snapshot, in order
    new = [c.startswith("new_") for c in seg["customer_id"].to_pylist()]
    prev = seg["previous_segment"].to_pylist()
    assert sum(new) == 15 and all((p is None) == is_new for p, is_new in zip(prev, new, strict=True))
    assert not any(c for c, is_new in zip(seg["changed"].to_pylist(), new, strict=True) if is_new)
    trans = pq.read_table(out / "transitions.parquet").to_pylist()
    assert sum(t["count"] for t in trans) == seg.num_rows
    assert sum(t["count"] for t in trans if t["from"] is None) == 15
    changed = sum(seg["changed"].to_pylist())
    assert changed > 0 and changed == sum(t["count"] for t in trans if t["from"] is not None and t["from"] != t["to"])
    movers = pq.read_table(out / "movers.parquet")
    assert movers.num_rows == changed and all(len(f) > 0 for f in movers["features"].to_pylist())
    drift = json.loads((out / "drift.json").read_text())
    assert drift["n_new_customers"] == 15 and drift["psi_max"] > 0
    assert isinstance(drift["refit_recommended"], bool) and len(drift["reasons"]) == drift["refit_recommended"] * \
        len(drift["reasons"])
    ledger = json.loads((project / "assign" / "ledger.json").read_text())["files"]
    assert [Path(e["path"]).name for e in ledger] == ["events_new.parquet"] and ledger[0]["as_of"] == "2025-02-15"
    assert result["consumed"] == [str(inbox / "events_new.parquet")]

    # a second run: nothing consumed again, the same bytes
    first = _bytes(out)
    again = _assign(project, f"assign.input={inbox}", "assign.margin=0", "assign.confirm_runs=null")
    assert again["consumed"] == [] and _bytes(out) == first
    assert len(json.loads((project / "assign" / "ledger.json").read_text())["files"]) == 1

    # a large margin keeps more customers where they were
    sticky = _assign(loose, f"assign.input={inbox}", "assign.margin=0.5", "assign.confirm_runs=null")
    assert sticky["n_changed"] < changed and sticky["n_held"] > 0

    # the next run compares with the last assign run, and reports flip-flops
    later = assign.run(_cfg(project, "assign", "data.as_of=2025-03-20", f"assign.input={inbox}"))
    drift = json.loads((Path(later["output_dir"]) / "drift.json").read_text())
    assert drift["previous"]["source"] == "assign/2025-02-15" and drift["flip_flop_rate"] is not None
    # tenure grows with the calendar: its PSI is reported, but is never a reason to refit
    assert drift["psi_exempt"] == ["tenure_days"] and drift["psi"]["tenure_days"] > 0
    assert not any("tenure_days" in reason for reason in drift["reasons"])
    seg3 = pq.read_table(Path(later["output_dir"]) / "segments.parquet")
    assert seg3["previous_segment"].to_pylist() == seg["segment"].to_pylist()


def test_votes_confirm_a_move_after_confirm_runs(project):
    """With a margin no move can beat, a customer moves only on the second consecutive vote."""
    first = _assign(project, "assign.margin=0.99", "assign.confirm_runs=2")
    assert first["n_changed"] == 0 and first["n_held"] > 0
    state = pq.read_table(Path(first["output_dir"]) / "state.parquet")
    assert state.num_rows == first["n_held"] and set(state["votes"].to_pylist()) == {1}
    second = assign.run(_cfg(project, "assign", "data.as_of=2025-02-16", "assign.margin=0.99",
                             "assign.confirm_runs=2"))
    assert second["n_changed"] > 0


@pytest.mark.parametrize(("remove", "job"), [
    ("segment/kmeans.json", "segment"),
    ("segment/segmentation.json", "segment"),
    ("features/transform.json", "features"),
    ("features/featurizer.json", "features"),
    ("fuse/transform.safetensors", "fuse"),
    ("journeys/encoder.safetensors", "journeys"),
])
def test_a_missing_artifact_names_it_and_the_job_to_rerun(project, remove, job):
    (project / remove).unlink()
    with pytest.raises(UserInputError) as err:
        assign.run(_cfg(project, "assign"))
    assert Path(remove).name.split(".")[0] in str(err.value) and f"`gpuseg {job}`" in str(err.value)
    assert err.value.config_key == "paths.work_dir" and not (project / "assign").exists()


def test_artifacts_of_incompatible_runs_are_refused(project):
    seg = project / "segment" / "segmentation.json"
    original = seg.read_bytes()
    doc = json.loads(original)
    seg.write_text(json.dumps({**doc, "columns": doc["columns"][:-1]}))
    with pytest.raises(UserInputError, match=r"segmentation.json.*`gpuseg segment`"):
        assign.run(_cfg(project, "assign"))
    seg.write_bytes(original)
    # features re-run with another feature set: the fusion transform no longer fits (the error names
    # the features transform, or the fuse outputs made from the earlier features run)
    features.run(_cfg(project, "features", "features.top_n_event_types=1", "features.top_n_channels=1"))
    with pytest.raises(UserInputError, match=r"`gpuseg (features|fuse)`"):
        assign.run(_cfg(project, "assign"))


def test_the_cli_exits_2_with_the_message(project, capsys):
    from gpuseg.cli import main

    (project / "segment" / "kmeans.safetensors").unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["assign", f"paths.work_dir={project}", "progress=false", "device=cpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "kmeans" in err and "gpuseg segment" in err and "Traceback" not in err
