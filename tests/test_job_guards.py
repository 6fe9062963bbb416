"""Jobs that refuse to do harm or to give a silently wrong answer: each case is exit 2 with the key named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_table

from gpuseg.runtime.errors import ConfigError, UserInputError

GPUSEG = shutil.which("gpuseg")


def _gpuseg(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [GPUSEG] if GPUSEG else [sys.executable, "-m", "gpuseg"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _user_files(folder):
    """A user's own tables, with the names the synthetic generator would write."""
    write_table(folder / "customers.parquet", {"customer_id": ["u1", "u2"], "age": [30, 40]})
    write_table(folder / "events.parquet", {"customer_id": ["u1"], "timestamp": ["2024-01-01"]})
    write_table(folder / "texts.parquet", {"customer_id": ["u1"], "text": ["mine"]})
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_run_never_overwrites_a_users_own_files(tmp_path):
    data = tmp_path / "mydata"
    data.mkdir()
    before = _user_files(data)
    out = _gpuseg("run", f"paths.data_dir={data}", f"paths.work_dir={tmp_path / 'work'}", "progress=false",
                  cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert str(data) in out.stderr and "data=custom" in out.stderr
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_generate_replaces_only_its_own_dataset(make_cfg, tmp_path):
    from gpuseg.jobs import generate

    data = tmp_path / "synth"
    cfg = make_cfg("generate", f"paths.data_dir={data}", "data.generator.n_customers=60")
    generate.run(cfg)
    assert generate.exists(cfg)
    with pytest.raises(ConfigError, match="overwrite=true"):
        generate.run(cfg)
    # its own previous set is recognised by its manifest and may be replaced
    generate.run(make_cfg("generate", f"paths.data_dir={data}", "data.generator.n_customers=80", "overwrite=true"))
    assert pq.read_metadata(data / "customers.parquet").num_rows == 80
    # one foreign file in the folder and nothing is generated there, even with overwrite=true
    (data / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserInputError, match="did not generate") as err:
        generate.run(make_cfg("generate", f"paths.data_dir={data}", "overwrite=true"))
    assert "notes.csv" in str(err.value) and "data=custom" in str(err.value)
    assert pq.read_metadata(data / "customers.parquet").num_rows == 80


def test_generating_into_a_folder_of_files_without_our_manifest_is_refused(make_cfg, tmp_path):
    from gpuseg.jobs import generate

    data = tmp_path / "mixed"
    data.mkdir()
    before = _user_files(data)
    with pytest.raises(UserInputError, match="did not generate"):
        generate.run(make_cfg("generate", f"paths.data_dir={data}", "overwrite=true"))
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_missing_as_of_is_exit_2_naming_the_key(tmp_path):
    write_table(tmp_path / "events.csv", {"customer_id": ["c1"], "timestamp": ["2024-01-01"],
                                          "event_type": ["purchase"]})
    out = _gpuseg("validate", "data=custom", f"paths.data_dir={tmp_path}", "data.customers.path=null",
                  "data.events.columns.amount=null", "data.events.columns.category=null",
                  "data.events.columns.channel=null", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "data.as_of is required" in out.stderr and "config key to change: data.as_of" in out.stderr


def test_unparseable_as_of_names_the_key(make_cfg):
    from gpuseg.jobs.common import data_as_of

    with pytest.raises(ConfigError, match="data.as_of must be a date"):
        data_as_of(make_cfg("features", "data.as_of=last-tuesday"))
    assert data_as_of(make_cfg("features", "data.as_of=2024-06-30")) == "2024-06-30"


@pytest.mark.parametrize("job", ["generate", "validate", "features", "text", "journeys", "fuse", "segment",
                                 "profile", "lookalike", "run"])
def test_every_job_takes_the_shared_keys(make_cfg, job):
    cfg = make_cfg(job, "device=cpu", "seed=3", "progress=false", "paths.data_dir=somewhere")
    assert cfg.device.type == "cpu" and cfg.seed == 3 and cfg.paths.data_dir == "somewhere"


def test_roles_that_leave_no_purchase_are_an_error_naming_data_roles(make_cfg, tmp_path):
    from gpuseg.jobs import features, validate

    write_table(tmp_path / "events.csv", {
        "customer_id": ["c1", "c1", "c2"], "timestamp": ["2024-01-01", "2024-02-01", "2024-01-05"],
        "event_type": ["order", "order", "refund"], "amount": [10.0, 12.0, -3.0]})
    cfg = make_cfg("features", "data=custom", f"paths.data_dir={tmp_path}", "data.as_of=2024-06-01",
                   "data.customers.path=null", "data.events.columns.category=null", "data.events.columns.channel=null")
    validate.run(cfg)
    with pytest.raises(ConfigError) as err:
        features.run(cfg)
    assert err.value.config_key == "data.roles.purchase"
    assert "order" in str(err.value) and "refund" in str(err.value)
    # naming the purchase type fixes it
    result = features.run(make_cfg("features", "data=custom", f"paths.data_dir={tmp_path}", "data.as_of=2024-06-01",
                                   "data.customers.path=null", "data.events.columns.category=null",
                                   "data.events.columns.channel=null", "data.roles.purchase=[order]"))
    table = pq.read_table(result["features_path"])
    assert table.column("frequency").to_pylist() == [2.0, 0.0]
    assert isinstance(table, pa.Table)


def test_a_label_without_values_is_skipped_with_a_warning(caplog):
    from gpuseg.jobs.common import customer_label

    schema = {"customers": {"labels": ["churned", "upsold"]}}
    customers = pa.table({"customer_id": ["a", "b"], "churned": pa.array([None, None], pa.float64()),
                          "upsold": [1.0, 0.0]})
    with caplog.at_level("WARNING"):
        assert customer_label("auto", schema, customers, key="journey.label") == (None, None)
    assert "has no known value" in caplog.text and "journey.label" in caplog.text
    name, values = customer_label("upsold", schema, customers, key="journey.label")
    assert name == "upsold" and values.tolist() == [1.0, 0.0]
    assert customer_label(None, schema, customers, key="journey.label") == (None, None)
    with pytest.raises(ConfigError, match="not a column") as err:
        customer_label("churnd", schema, customers, key="profile.churn.label")
    assert err.value.config_key == "profile.churn.label"


def test_value_that_cannot_be_estimated_is_a_note_not_nan_for_everyone(make_cfg, tmp_path):
    import numpy as np

    from gpuseg.data.schema import EVENTS
    from gpuseg.jobs.profile import _value

    ids = pa.array([f"c{i}" for i in range(60)])
    # one purchase each: nobody repeats, so BG/NBD has nothing to learn from
    days = np.datetime64("2024-01-01", "us") + np.arange(60) * np.timedelta64(1, "D")
    events = pa.table({"customer_id": ids, "timestamp": pa.array(days, pa.timestamp("us")),
        "event_type": ["purchase"] * 60, "amount": [10.0] * 60, "category": pa.nulls(60, pa.string()),
        "channel": pa.nulls(60, pa.string())}, schema=EVENTS)
    path = tmp_path / "events.parquet"
    pq.write_table(events, path)
    notes: list[str] = []
    out = _value(make_cfg("profile"), ids, path, {"purchase": ["purchase"]}, "2024-06-01", None, 0.0, "cpu", notes)
    assert notes and notes[0].startswith("value not estimated: too few customers with a purchase history")
    assert out["report"]["not_estimated"] in notes[0]
    assert np.isnan(out["expected_value"]).all()
    notes.clear()
    _value(make_cfg("profile"), ids, None, {}, "2024-06-01", None, 0.0, "cpu", notes)
    assert notes == ["value not estimated: the data have no events table"]


def test_run_reuses_unchanged_stages_and_reruns_what_changed(make_cfg, tmp_path):
    from gpuseg.jobs import run, segment

    base = ("data.generator.n_customers=300", "device=cpu", "stages=[validate,features,fuse,segment]",
            "segment.n_clusters=3", "segment.confidence.n_bootstrap=1")
    first = run.run(make_cfg("run", *base))
    assert first["reused"] == []
    again = run.run(make_cfg("run", *base))
    assert again["reused"] == ["validate", "features", "fuse", "segment"]
    # a memory budget changes how segment reads its matrix, not what it writes: still reused
    budget = run.run(make_cfg("run", *base, "segment.memory_mb=0.01"))
    assert budget["reused"] == ["validate", "features", "fuse", "segment"]
    # a changed setting re-runs its stage and what depends on it, nothing upstream
    changed = run.run(make_cfg("run", *base[:-2], "segment.n_clusters=4", "segment.confidence.n_bootstrap=1"))
    assert changed["reused"] == ["validate", "features", "fuse"]
    # a stage re-run by hand in between is not taken for the run's own result
    segment.run(make_cfg("segment", "device=cpu", "segment.n_clusters=5", "segment.confidence.n_bootstrap=1"))
    after = run.run(make_cfg("run", *base[:-2], "segment.n_clusters=4", "segment.confidence.n_bootstrap=1"))
    assert after["reused"] == ["validate", "features", "fuse"]
    forced = run.run(make_cfg("run", *base, "force=true"))
    assert forced["reused"] == []


def test_only_result_neutral_settings_leave_a_fingerprint_unchanged(make_cfg):
    from gpuseg.jobs import reuse

    upstream = {"fuse": "f", "features": "x", "validate": "v", "journeys": "j", "segment": "s"}
    for stage, key in (("segment", "segment.memory_mb"), ("profile", "profile.memory_mb"),
                       ("text", "text.aggregate_memory_mb"), ("validate", "data.memory_mb")):
        assert key in reuse.RESULT_NEUTRAL
        plain = reuse.fingerprint(make_cfg(stage), stage, upstream)
        assert reuse.fingerprint(make_cfg(stage, f"{key}=64"), stage, upstream) == plain, key
    segment = reuse.fingerprint(make_cfg("segment"), "segment", upstream)
    assert reuse.fingerprint(make_cfg("segment", "segment.n_clusters=7"), "segment", upstream) != segment
    assert reuse.fingerprint(make_cfg("segment"), "segment", {**upstream, "fuse": "g"}) != segment


def test_most_segments_tiny_is_a_warning_and_k_equal_to_n_still_segments(make_cfg, caplog):
    import json

    from gpuseg.jobs import features, generate, segment, validate

    base = ("data.generator.n_customers=60", "device=cpu")
    for job in (generate, validate, features):
        job.run(make_cfg(job.__name__.rsplit(".", 1)[1], *base))
    base = (*base, "segment.confidence.n_bootstrap=1")
    with caplog.at_level("WARNING"):
        result = segment.run(make_cfg("segment", *base, "segment.n_clusters=40"))
    assert "segment.n_clusters is too large" in caplog.text
    assert any("too large" in note for note in result["notes"])
    # as many segments as customers: no silhouette to compute, no traceback
    result = segment.run(make_cfg("segment", *base, "segment.n_clusters=60"))
    metrics = json.loads((Path(result["output_dir"]) / "metrics.json").read_text())
    assert metrics["n_clusters"] == 60 and "silhouette_sampled" not in metrics


def test_a_text_model_with_only_pickled_weights_is_refused(tmp_path):
    from gpuseg.text.model_path import resolve_model

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UserInputError, match="pickle files") as err:
        resolve_model(folder)
    assert err.value.config_key == "text.model"
    (folder / "model.safetensors").write_bytes(b"")
    assert resolve_model(folder) == str(folder.resolve())


def test_a_work_dir_that_is_a_file_is_a_message(tmp_path):
    blocker = tmp_path / "work"
    blocker.write_text("not a folder")
    out = _gpuseg("features", f"paths.work_dir={blocker}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "paths.work_dir" in out.stderr and str(blocker) in out.stderr


def test_a_seed_file_that_is_not_utf8_is_a_message(make_cfg, tmp_path):
    from gpuseg.jobs.lookalike import read_seeds

    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes(b"C0001\n\xff\xfeC0002\n")
    with pytest.raises(UserInputError, match="not UTF-8") as err:
        read_seeds(str(seeds))
    assert err.value.config_key == "lookalike.seeds"
