"""``text.model=static``: a model2vec model distilled locally, cached, reused, and used by the text job.

Distilling all-MiniLM-L6-v2 runs its 30k-token vocabulary through the transformer (about a minute
on a quiet 2-core CPU, several on a busy one), so the mechanics are tested on a tiny random-weight
model with the same tokenizer (one module-scoped distillation, ~10-30 s) and only the semantic
check distills the real packaged model (marked ``slow``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

# the small project of the transformer's job test (4 customers, 7 texts, one after as_of)
from test_text_job import TEXT, project  # noqa: F401, F811

from gpuseg.runtime.errors import GpusegError, UserInputError
from gpuseg.text import StaticEmbedder
from gpuseg.text.model_path import default_model_dir
from gpuseg.text.static import RECORD

pytestmark = pytest.mark.skipif(default_model_dir() is None, reason="gpuseg[models] is not installed")

TEXTS = ["Great product!", "Where is my refund? Nobody answers.", "Great product!", "",
         "Arrived broken, second time this month.", "   ", "Love the recycled packaging."]


def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt of model2vec to ask the Hugging Face hub fails the test."""
    import model2vec.distill.distillation as distillation

    def refuse(*args, **kwargs):
        raise AssertionError("model2vec tried to reach the Hugging Face hub")

    monkeypatch.setattr(distillation, "model_info", refuse)


def _tiny_base(dest: Path) -> Path:
    """The packaged model's tokenizer and configs with a 1-layer, 32-dim random encoder (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModel

    src = default_model_dir()
    for path in src.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors" and "onnx" not in path.parts:
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    config = AutoConfig.from_pretrained(src, local_files_only=True)
    config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size = 1, 32, 2, 64
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(dest, safe_serialization=True)
    return dest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base model and one static model distilled from it (``pca_dims=16``)."""
    root = tmp_path_factory.mktemp("static")
    base = _tiny_base(root / "base")
    with pytest.MonkeyPatch.context() as mp:
        _no_hub(mp)
        embedder = StaticEmbedder(str(base), cache_dir=root / "cache", pca_dims=16, device="cpu")
    return base, root / "cache", embedder


def test_distilled_once_then_reused_and_redistilled_when_settings_change(tiny, monkeypatch):
    base, cache, first = tiny
    assert first.distilled_ and first.dim == 16 and first.distill_seconds_ > 0
    files = sorted(p.name for p in cache.iterdir())
    # model2vec's files plus gpuseg's record; nothing pickled, no staging leftovers beside the folder
    assert {"model.safetensors", "tokenizer.json", "config.json", RECORD} <= set(files)
    assert all(p.suffix in (".safetensors", ".json", ".md") for p in cache.iterdir()), files
    assert sorted(p.name for p in cache.parent.iterdir()) == ["base", "cache"]
    weights = cache / "model.safetensors"
    stat = weights.stat()

    _no_hub(monkeypatch)
    again = StaticEmbedder(str(base), cache_dir=cache, pca_dims=16, device="cpu")
    assert not again.distilled_ and again.fingerprint == first.fingerprint
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert again.distill_seconds_ == first.distill_seconds_  # the recorded time, not a new one
    np.testing.assert_array_equal(again.encode(TEXTS), first.encode(TEXTS))

    # another setting is another model: distilled again, into a fresh copy of the folder
    other_cache = cache.parent / "cache_other"
    shutil.copytree(cache, other_cache)
    changed = StaticEmbedder(str(base), cache_dir=other_cache, pca_dims=8, device="cpu")
    assert changed.distilled_ and changed.dim == 8 and changed.fingerprint != first.fingerprint
    assert (other_cache / RECORD).is_file()
    assert sorted(p.name for p in other_cache.parent.iterdir()) == ["base", "cache", "cache_other"]
    shutil.rmtree(other_cache)


def test_encode_shape_normalised_deterministic_and_deduped(tiny):
    from model2vec import StaticModel

    _, cache, embedder = tiny
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 16) and vectors.dtype == np.float32
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 2, 4, 6]], 1.0, atol=1e-5)
    assert np.all(vectors[[3, 5]] == 0)  # empty texts: zeros, as with the transformer
    np.testing.assert_array_equal(vectors[0], vectors[2])
    stats = embedder.last_stats_
    assert (stats["n_texts"], stats["n_unique"], stats["n_empty"]) == (7, 4, 2)

    # same result without de-duplication, in small batches, and from a fresh load of the folder
    plain = StaticEmbedder.load(cache, dedupe=False, batch_size=2)
    np.testing.assert_array_equal(plain.encode(TEXTS), vectors)
    assert plain.last_stats_["n_unique"] == 5
    # and model2vec's own encoder agrees (it pools in float16, hence the tolerance)
    reference = StaticModel.from_pretrained(cache).encode([t for t in TEXTS if t.strip()])
    np.testing.assert_allclose(vectors[[0, 1, 2, 4, 6]], reference, atol=3e-3)


def test_long_text_truncated_and_counted(tiny):
    _, cache, _ = tiny
    embedder = StaticEmbedder.load(cache, max_length=4)
    out = embedder.encode(["one two three four five six", "one two three four", "one two three four five six"])
    assert embedder.last_stats_["n_truncated"] == 2
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # only the first 4 tokens count


def test_missing_base_model_and_bad_settings_are_clear_errors(tiny, tmp_path):
    base, _, _ = tiny
    with pytest.raises(UserInputError) as err:
        StaticEmbedder(str(tmp_path / "no_such_model"), cache_dir=tmp_path / "c", device="cpu")
    assert err.value.config_key == "text.static.base" and "no_such_model" in str(err.value)
    assert not (tmp_path / "c").exists()
    with pytest.raises(UserInputError) as err:
        StaticEmbedder(str(base), cache_dir=tmp_path / "c", pca_dims=64, device="cpu")  # the base has 32 dims
    assert err.value.config_key == "text.static.pca_dims" and "32" in str(err.value)
    with pytest.raises(GpusegError) as err:
        StaticEmbedder(str(base), cache_dir=tmp_path / "c", pca_dims="many", device="cpu")
    assert err.value.config_key == "text.static.pca_dims"
    with pytest.raises(UserInputError) as err:
        StaticEmbedder.load(tmp_path / "never_distilled")
    assert err.value.config_key == "text.model"


def test_text_job_static_end_to_end_resumes_and_keeps_its_own_fingerprint(tiny, project):  # noqa: F811
    from gpuseg.jobs import text

    base, _, _ = tiny
    make_cfg, data_overrides, texts = project
    overrides = (*data_overrides, *TEXT)  # 7 texts in parts of 3
    static = ("text.model=static", f"text.static.base={base}", "text.static.pca_dims=16")

    result = text.run(make_cfg("text", *overrides, *static))
    work = Path(result["output_dir"])
    assert result["model"] == "static" and result["dim"] == 16 and result["static"]["distilled"]
    assert (work / "static_model" / RECORD).is_file() and (work / "static_model" / "model.safetensors").is_file()
    table = pq.read_table(result["embeddings_path"])
    assert table["customer_id"].to_pylist() == ["a", "b", "c", "d"]
    assert table["has_text"].to_pylist() == [True, True, True, False]
    all_mean = table["all_mean"].combine_chunks().values.to_numpy().reshape(-1, 16)
    reference = StaticEmbedder.load(work / "static_model").encode(texts[:2])
    np.testing.assert_allclose(all_mean[0], reference.mean(0), atol=1e-6)
    assert np.all(all_mean[3] == 0)
    fingerprint = (work / "parts" / "manifest.json").read_text()

    # a second run reuses the distilled model and every part
    again = text.run(make_cfg("text", *overrides, *static))
    assert not again["static"]["distilled"] and again["n_parts_resumed"] == 3 and again["n_texts"] == 0
    assert pq.read_table(again["embeddings_path"]).equals(table)

    # the transformer's vectors are other vectors: its parts are not the static model's
    transformer = text.run(make_cfg("text", *overrides))
    assert transformer["dim"] == 384 and transformer["n_parts_resumed"] == 0 and "static" not in transformer
    assert (work / "parts" / "manifest.json").read_text() != fingerprint
    back = text.run(make_cfg("text", *overrides, *static))
    assert back["n_parts_resumed"] == 0 and not back["static"]["distilled"]  # the cache survived the switch
    assert pq.read_table(back["embeddings_path"]).equals(table)


@pytest.mark.slow
def test_static_model_of_the_packaged_transformer_keeps_meaning(tmp_path, monkeypatch):
    """Distilled from the real all-MiniLM-L6-v2, close texts stay closer than unrelated ones."""
    _no_hub(monkeypatch)
    embedder = StaticEmbedder(cache_dir=tmp_path / "static_model", device="cpu")
    assert embedder.dim == 256 and embedder.max_length == 256
    pairs = [("The delivery was late and the parcel arrived damaged.", "My package came broken and days late."),
             ("I love this phone, the battery lasts all day.", "Great smartphone with excellent battery life."),
             ("How do I get a refund for my order?", "I want my money back for this purchase.")]
    a = embedder.encode([p[0] for p in pairs])
    b = embedder.encode([p[1] for p in pairs])
    sim = a @ b.T
    for i in range(len(pairs)):
        others = [sim[i, j] for j in range(len(pairs)) if j != i]
        assert sim[i, i] > max(others) + 0.05, (i, sim)
