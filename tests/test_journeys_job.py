"""``gpuseg journeys`` end to end on a small synthetic dataset (generate -> validate -> features)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from gpuseg.jobs import features, generate, journeys, validate
from gpuseg.journey import JourneyEncoder, SequenceBuilder
from gpuseg.runtime.errors import ConfigError, UserInputError

JOB = ("device=cpu", "journey.epochs=10")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One synthetic project (1500 customers) shared by the tests; journeys run once."""
    from hydra import compose, initialize_config_module

    work = tmp_path_factory.mktemp("journeys") / "work"

    def make(job, *overrides):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false", *overrides])

    generate.run(make("generate", "data.generator.n_customers=1500"))
    validate.run(make("validate"))
    features.run(make("features"))
    result = journeys.run(make("journeys", *JOB))
    return make, work, result


def test_artifacts_cover_every_customer_in_order(project):
    _, work, result = project
    out = work / "journeys"
    customers = pq.read_table(work / "validated" / "customers.parquet")
    emb = pq.read_table(out / "embeddings.parquet")
    assert emb["customer_id"].to_pylist() == customers["customer_id"].to_pylist()
    assert emb.schema.field("journey").type == pa.list_(pa.float32(), 64)
    assert emb.schema.field("has_journey").type == pa.bool_()
    X = np.stack(emb["journey"].to_numpy(zero_copy_only=False))
    has = emb["has_journey"].to_numpy(zero_copy_only=False)
    assert has.all() and np.isfinite(X).all() and (np.abs(X).sum(1) > 0).all()  # synthetic: all active
    assert (emb["n_events"].to_numpy() > 0).all()
    for name in ("encoder.safetensors", "encoder.json", "vocabularies.json", "metrics.json"):
        assert (out / name).exists()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    assert result["embeddings_path"] == str(out / "embeddings.parquet")
    assert (work / "manifests" / "journeys.json").exists()


def _persona_ari(work):
    from gpuseg.evaluation import persona_ari

    table = pq.read_table(work / "journeys" / "embeddings.parquet")
    X = np.stack(table["journey"].to_numpy(zero_copy_only=False))
    has = table["has_journey"].to_numpy(zero_copy_only=False)
    return persona_ari(X, table["customer_id"].combine_chunks(), pq.read_table(work / "data" / "ground_truth.parquet"),
                       mask=has, seed=0)


def test_metrics_show_the_model_beats_baselines_and_separates_order(project):
    _, work, result = project
    metrics = json.loads((work / "journeys" / "metrics.json").read_text())
    nea = metrics["next_event_accuracy"]
    assert nea["n_steps"] > 1000
    assert nea["model"] > nea["markov"] > nea["unigram"] + 0.2
    # log-loss on the same test steps; the Markov chain is smoothed, so its log-loss is finite
    ll = metrics["next_event_log_loss"]
    assert ll["n_steps"] == nea["n_steps"] and not ll["too_short"]
    assert ll["model"] < ll["markov"] < ll["unigram"] and ll["model_beats_both"]
    auc = metrics["label_auc"]
    assert auc["label"] == "churned" and auc["n_test"] == metrics["split"]["test"]
    assert auc["journey_head_auc"] > 0.65 and auc["rfm_logistic_auc"] > 0.65  # both reported
    # the job knows nothing of the synthetic personas; the evaluation module scores its embeddings
    assert "persona_ari" not in metrics
    ari = _persona_ari(work)
    assert ari["n_personas"] == 9 and ari["all_personas"] > 0.1
    # planner vs impulse differ only in the order of their events
    assert ari["order_pair"]["ari"] > 0.5
    assert metrics["split"]["train"] + metrics["split"]["validation"] + metrics["split"]["test"] == 1500
    assert len(metrics["history"]) >= 1 and metrics["training"]["resumed_from"] is None


def test_saved_encoder_and_vocabularies_encode_new_data_alone(project):
    _, work, _ = project
    out = work / "journeys"
    enc = JourneyEncoder.load(out / "encoder")
    builder = SequenceBuilder.from_dict(enc.metadata_["sequences"])
    ids = pq.read_table(work / "validated" / "customers.parquet")["customer_id"].combine_chunks()
    seqs = builder.transform(work / "validated" / "events.parquet", ids)
    X = np.stack(pq.read_table(out / "embeddings.parquet")["journey"].to_numpy(zero_copy_only=False))
    assert np.allclose(enc.transform(seqs), X, atol=1e-6)


def test_rerun_resumes_the_finished_training(project):
    make, work, _ = project
    before = pq.read_table(work / "journeys" / "embeddings.parquet")
    result = journeys.run(make("journeys", *JOB))
    metrics = json.loads((work / "journeys" / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 0 and metrics["training"]["resumed_from"] is not None
    assert pq.read_table(work / "journeys" / "embeddings.parquet").equals(before)
    assert result["next_event_accuracy"]["model"] > 0


def test_no_label_no_head_and_bad_label_is_a_config_error(project, tmp_path):
    make, work, _ = project
    cfg = make("journeys", "device=cpu", "journey.label=null", "journey.epochs=1", "journey.resume=false",
               "journey.hidden_size=16")
    result = journeys.run(cfg)
    assert result["label_auc"] is None
    assert not JourneyEncoder.load(work / "journeys" / "encoder").has_aux_
    with pytest.raises(ConfigError, match="label 'nope'") as err:
        journeys.run(make("journeys", "device=cpu", "journey.label=nope"))
    assert err.value.config_key == "journey.label"


def test_missing_validated_data_names_the_work_dir(make_cfg):
    with pytest.raises(UserInputError, match="run `gpuseg validate`") as err:
        journeys.run(make_cfg("journeys", "device=cpu"))
    assert err.value.config_key == "paths.work_dir"


def test_profile_reads_the_journeys_sequence_settings(project):
    """The profile's journey n-grams use the journeys job's vocabularies and max_len, not its own."""
    from gpuseg.jobs.profile import _journey_codes

    _, work, _ = project
    events = work / "validated" / "events.parquet"
    ids = pq.read_table(work / "validated" / "customers.parquet")["customer_id"].combine_chunks()
    enc = JourneyEncoder.load(work / "journeys" / "encoder")
    codes, vocab = _journey_codes(work, events, ids, enc.metadata_["as_of"], max_len=7)
    assert codes.shape == (len(ids), enc.metadata_["sequences"]["params"]["max_len"])
    assert vocab[len(vocab) - len(enc.metadata_["sequences"]["vocabularies"]["event_type"]):] == \
        enc.metadata_["sequences"]["vocabularies"]["event_type"]
    # another as_of: the encoder does not apply, and the profile's own setting is used
    codes, _ = _journey_codes(work, events, ids, "2024-12-01", max_len=7)
    assert codes.shape == (len(ids), 7)


def test_a_data_source_names_its_own_journey_fields():
    """journey.extra_columns=auto takes data.journey.extra_columns when the source sets it."""
    from omegaconf import OmegaConf

    from gpuseg.jobs.journeys import _extra_columns

    schema = {"events": {"extra_columns": ["invoice", "stock_code", "description"]}}
    auto = OmegaConf.create({"extra_columns": "auto"})
    assert _extra_columns(auto, schema, OmegaConf.create({})) == ["invoice", "stock_code", "description"]
    retail = OmegaConf.load(REPO / "gpuseg" / "conf" / "data" / "online_retail.yaml")
    assert _extra_columns(auto, schema, retail) == ["stock_code[:3]"]
    listed = OmegaConf.create({"extra_columns": ["description"]})
    assert _extra_columns(listed, schema, retail) == ["description"]


SMALL = ("device=cpu", "journey.epochs=1", "journey.hidden_size=16", "journey.resume=false")


def test_bounded_sample_trains_on_few_and_still_embeds_everyone(project):
    make, work, _ = project
    result = journeys.run(make("journeys", *SMALL, "journey.max_train_customers=300",
                               "journey.encode_chunk_customers=256"))
    metrics = json.loads((work / "journeys" / "metrics.json").read_text())
    sample = metrics["sample"]
    assert sample["sampled"] and sample["population"] == {"train": 1050, "validation": 150, "test": 300}
    # validation and test bounded in the split's proportion to the training sample
    assert sample["sample"] == {"train": 300, "validation": 43, "test": 86} == metrics["split"]
    assert metrics["training"]["n_train"] == 300 and sum(sample["strata"]["train"].values()) == 300
    assert metrics["label_auc"]["n_test"] == 86 and metrics["next_event_accuracy"]["n_steps"] > 0
    emb = pq.read_table(work / "journeys" / "embeddings.parquet")
    customers = pq.read_table(work / "validated" / "customers.parquet")
    assert emb["customer_id"].to_pylist() == customers["customer_id"].to_pylist()
    assert np.isfinite(np.stack(emb["journey"].to_numpy(zero_copy_only=False))).all()
    speed = metrics["throughput"]
    assert speed["encoded_sequences"] == 1500 and speed["encode_sequences_per_second"] > 0
    assert speed["train_sequences_per_second"] > 0 and result["throughput"] == speed


def test_no_bound_trains_on_every_customer(project):
    make, work, first = project
    assert not first["sample"]["sampled"]  # auto bound above the population: everyone
    journeys.run(make("journeys", *SMALL, "journey.max_train_customers=null"))
    metrics = json.loads((work / "journeys" / "metrics.json").read_text())
    assert metrics["sample"]["max_train_customers"] is None and not metrics["sample"]["sampled"]
    assert metrics["split"] == metrics["sample"]["population"] == {"train": 1050, "validation": 150, "test": 300}
    assert metrics["training"]["n_train"] == 1050
    with pytest.raises(ConfigError) as err:
        journeys.run(make("journeys", *SMALL, "journey.max_train_customers=0"))
    assert err.value.config_key == "journey.max_train_customers"


def test_without_a_customers_label_the_head_learns_no_purchase_in_the_hold_out(tmp_path):
    """Events-only data reaching past as_of (a shop's invoice log): the profile's churn label."""
    from hydra import compose, initialize_config_module

    rng = np.random.default_rng(0)
    rows = []
    for c in range(80):
        days = np.sort(rng.choice(np.arange(1, 150), size=int(rng.integers(2, 7)), replace=False))
        rows += [(f"c{c}", str(np.datetime64("2024-01-01") + int(d)), "purchase", float(5 + c % 7)) for d in days]
        if c % 2 == 0:  # half of them come back after as_of
            rows.append((f"c{c}", "2024-06-20", "purchase", 9.0))
    path = tmp_path / "data" / "events.csv"
    path.parent.mkdir()
    path.write_text("customer_id,timestamp,event_type,amount\n" + "\n".join(",".join(map(str, r)) for r in rows))

    def make(job, *overrides):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[
                f"paths.work_dir={tmp_path / 'work'}", "progress=false", "data=custom",
                f"paths.data_dir={path.parent}", "data.as_of=2024-06-01", "data.customers.path=null",
                "data.texts.path=null", "data.events.columns.category=null", "data.events.columns.channel=null",
                *overrides])

    validate.run(make("validate"))
    result = journeys.run(make("journeys", "device=cpu", "journey.epochs=1", "journey.hidden_size=16"))
    assert result["label_auc"]["label"] == "no_purchase_in_holdout"
    assert result["label_auc"]["positive_rate"] == pytest.approx(0.5, abs=0.3)
    assert JourneyEncoder.load(tmp_path / "work" / "journeys" / "encoder").has_aux_
