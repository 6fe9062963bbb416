"""``gpuseg text``: every customer gets a row, and an interrupted run resumes to the same output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from gpuseg.jobs import text, validate
from gpuseg.text import TextEmbedder
from gpuseg.text.model_path import default_model_dir

pytestmark = pytest.mark.skipif(default_model_dir() is None, reason="gpuseg[models] is not installed")


@pytest.fixture
def project(tmp_path, make_cfg):
    from conftest import write_table

    data = tmp_path / "data"
    write_table(data / "customers.parquet", {"customer_id": ["a", "b", "c", "d"], "age": [1.0, 2.0, 3.0, 4.0],
                                             "region": ["n"] * 4, "plan": ["x"] * 4, "churned": [0, 1, 0, 1]})
    write_table(data / "events.parquet", {
        "customer_id": ["a", "b", "c", "d"], "timestamp": ["2024-01-01"] * 4, "event_type": ["purchase"] * 4,
        "amount": [1.0] * 4, "category": ["x"] * 4, "channel": ["web"] * 4})
    texts = ["Great product!", "Where is my refund? Nobody answers.", "Great product!",
             "Arrived broken, second time this month.", "Love the recycled packaging.", "Great product!",
             "App keeps crashing at checkout."]
    write_table(data / "texts.parquet", {
        "customer_id": ["a", "a", "b", "b", "c", "c", "c"],
        "timestamp": ["2024-01-01", "2024-03-01", "2024-02-01", "2024-02-02", "2024-01-05", "2024-05-01",
                      "2025-01-01"],
        "source": ["review", "ticket", "review", "ticket", "review", "review", "ticket"],
        "text": texts, "rating": [5.0, None, 5.0, None, 4.0, 5.0, None]})
    data_overrides = (f"paths.data_dir={data}", "data.as_of=2024-06-01")
    validate.run(make_cfg("validate", *data_overrides))
    return make_cfg, data_overrides, texts


TEXT = ("device=cpu", "text.chunk_rows=3")


def test_text_job_every_customer_and_resume(project):
    make_cfg, overrides, texts = project
    result = text.run(make_cfg("text", *overrides, *TEXT))
    table = pq.read_table(result["embeddings_path"])
    assert table["customer_id"].to_pylist() == ["a", "b", "c", "d"]
    assert table["has_text"].to_pylist() == [True, True, True, False]
    # the text after as_of (c's ticket of 2025) counts nowhere
    assert table["ticket_count"].to_pylist() == [1, 1, 0, 0]
    assert table["review_count"].to_pylist() == [1, 1, 2, 0]
    dim = table.schema.field("all_mean").type.list_size
    all_mean = table["all_mean"].combine_chunks().values.to_numpy().reshape(-1, dim)
    assert np.all(all_mean[3] == 0)
    reference = TextEmbedder(device="cpu").encode(texts[:2])
    np.testing.assert_allclose(all_mean[0], reference.mean(0), atol=1e-5)

    # simulate an interruption: the last part and the output are gone; the rerun resumes
    work = result["output_dir"]
    parts = sorted((Path(work) / "parts").glob("part-*.npy"))
    assert len(parts) == 3
    parts[-1].unlink()
    again = text.run(make_cfg("text", *overrides, *TEXT))
    assert again["n_parts_resumed"] == 2 and again["n_texts"] == 1
    assert pq.read_table(again["embeddings_path"]).equals(table)


def test_text_job_without_texts_table_is_a_clear_error(project):
    from gpuseg.runtime.errors import UserInputError

    make_cfg, overrides, _ = project
    validate.run(make_cfg("validate", *overrides, "data.texts.path=null"))
    with pytest.raises(UserInputError) as err:
        text.run(make_cfg("text", *overrides, *TEXT))
    assert err.value.config_key == "data.texts.path"


def test_text_job_under_torchrun_matches_one_process(project, tmp_path):
    """Two gloo ranks each embed their share of the chunks; rank 0 aggregates the same output."""
    import subprocess
    import sys

    make_cfg, overrides, _ = project
    single = pq.read_table(text.run(make_cfg("text", *overrides, *TEXT))["embeddings_path"])
    work = Path(make_cfg("text", *overrides).paths.work_dir)
    (work / "text" / "embeddings.parquet").unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               "-m", "gpuseg", "text", f"paths.work_dir={work}", *overrides, *TEXT, "progress=false",
               "text.num_threads=1"]
    # a fresh part folder: every chunk is embedded again, split between the two ranks
    import shutil

    shutil.rmtree(work / "text" / "parts")
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    distributed = pq.read_table(work / "text" / "embeddings.parquet")
    assert distributed.column_names == single.column_names
    assert distributed["customer_id"].equals(single["customer_id"])
    dim = single.schema.field("all_mean").type.list_size
    a = single["all_mean"].combine_chunks().values.to_numpy().reshape(-1, dim)
    b = distributed["all_mean"].combine_chunks().values.to_numpy().reshape(-1, dim)
    np.testing.assert_allclose(a, b, atol=1e-5)
    metrics = __import__("json").loads((work / "text" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
