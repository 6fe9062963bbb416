"""TextEmbedder: parity with sentence-transformers, bad input, model resolution, OOM back-off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from conftest import DEVICES

from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.text import TextEmbedder, read_model_info, resolve_model
from gpuseg.text import embedder as embedder_mod
from gpuseg.text import model_path as model_path_mod

_LONG = (
    "I ordered the espresso machine in March and it arrived two weeks late, the box was "
    "crushed and the water tank had a crack along the bottom seam. "
)


def _parity_texts() -> list[str]:
    short = [
        "Great product!", "Love it", "Terrible.", "ok", "Where is my refund?", "Five stars",
        "Works as expected.", "Not worth the money", "Arrived broken", "meh",
    ]
    medium = [
        "The jacket fits well but the zipper broke after two weeks of normal use.",
        "Customer service answered within an hour and solved my billing problem. Thanks!",
        "I was charged twice for order #48213, please refund the second payment.",
        "  Leading and trailing whitespace should not matter   ",
        "MIXED case AND Numbers 12345 and symbols: $99.99 (20% off) -- <b>html</b>",
        "Das Produkt ist gut, aber die Lieferung hat zu lange gedauert.",
        "Le service client était très réactif, merci beaucoup !",
        "Café crème, naïve façade, jalapeño, Ångström, Zoë",
        "Emoji test 😀👍🔥 great stuff 💯",
        "中文评论：质量很好，发货很快。",
        "مرحبا، المنتج ممتاز وسريع التوصيل",
        "Привет! Отличный товар, рекомендую.",
        "tab\tseparated\tvalues and a\nnew line",
        "a" * 300,  # one long word: a single [UNK]-like piece, not truncated
        "https://example.com/orders/12345?ref=mail&utm_source=newsletter",
    ]
    long = [
        _LONG * 12,  # > 256 tokens: truncated
        "Ticket: " + " ".join(f"step {i} failed with error code E{i:04d};" for i in range(120)),
        "Review. " + "The battery life is excellent and the screen is bright. " * 30,
        _LONG * 3,
        "word " * 600,
    ]
    texts = short + medium + long
    texts += short[:5] + medium[:5] + long[:2]  # duplicates, as real data has
    texts += [t.upper() for t in medium[:4]] + [t + "!" for t in short[:4]]
    return texts


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a small shared CI box, OpenMP threads waiting on each other at
    every barrier make a forward pass many times slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _parity_texts()


@pytest.fixture(scope="module")
def reference(texts) -> np.ndarray:
    """SentenceTransformer(...).encode(normalize_embeddings=True) for the same model and texts."""
    st = _sentence_transformer()
    return st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def cpu_embedder() -> TextEmbedder:
    return TextEmbedder(device="cpu", batch_size=8)


def _sentence_transformer():
    """The reference implementation (a dev dependency), on the packaged default model."""
    from sentence_transformers import SentenceTransformer  # slow import: only where needed

    return SentenceTransformer(resolve_model(None), device="cpu")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------- parity


@pytest.mark.parametrize("device", DEVICES)
def test_parity_with_sentence_transformers(device, texts, reference, cpu_embedder):
    emb = cpu_embedder if device == "cpu" else TextEmbedder(device=device, batch_size=8)
    assert len(texts) >= 50 and len(set(texts)) < len(texts)

    emb.dedupe = True
    with_dedupe = emb.encode(texts)
    stats = dict(emb.last_stats_)
    emb.dedupe = False
    without = emb.encode(texts)
    emb.dedupe = True

    assert with_dedupe.dtype == np.float32 and with_dedupe.shape == (len(texts), 384)
    for got in (with_dedupe, without):
        cos = _cosine(got, reference)
        assert cos.min() >= 0.999, f"worst text {texts[int(cos.argmin())]!r}: cosine {cos.min()}"
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    # dedupe changes the time, never the vectors
    np.testing.assert_allclose(with_dedupe, without, atol=2e-3 if device != "cpu" else 1e-5)
    assert stats["n_unique"] == len(set(texts))
    assert emb.last_stats_["n_unique"] == len(texts)
    n_long = sum(len(emb.tokenizer(t)["input_ids"]) > emb.max_length for t in texts)
    assert n_long >= 5 and stats["n_truncated"] == n_long
    assert stats["n_empty"] == 0
    assert stats["texts_per_s"] > 0 and stats["padding_ratio"] < 0.5


def test_model_info_and_attributes(cpu_embedder):
    info = read_model_info(cpu_embedder.model_path)
    assert info["pooling"] == "mean" and info["normalize"] is True
    assert info["max_seq_length"] == 256 and info["sentence_transformers"] is True
    assert cpu_embedder.dim == 384 and cpu_embedder.max_length == 256
    assert cpu_embedder.precision == "fp32" and cpu_embedder.device == torch.device("cpu")
    assert "TextEmbedder(" in repr(cpu_embedder)


def test_short_max_length_matches_sentence_transformers(texts):
    sample = texts[10:20]
    st = _sentence_transformer()
    st.max_seq_length = 16
    ref = st.encode(sample, normalize_embeddings=True)
    emb = TextEmbedder(device="cpu", max_length=16)
    got = emb.encode(sample)
    assert _cosine(got, ref).min() >= 0.999
    n_long = sum(len(emb.tokenizer(t)["input_ids"]) > 16 for t in sample)
    assert n_long > 0 and emb.last_stats_["n_truncated"] == n_long


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_missing_texts_are_zero_rows(device, cpu_embedder):
    emb = cpu_embedder if device == "cpu" else TextEmbedder(device=device)
    inputs = ["", "   ", None, "\n\t ", float("nan"), "Great product!", "\u3000"]
    out = emb.encode(inputs)
    assert out.shape == (7, 384)
    zero = [0, 1, 2, 3, 4, 6]
    assert not out[zero].any()
    assert np.isclose(np.linalg.norm(out[5]), 1.0, atol=1e-3)
    assert emb.last_stats_["n_empty"] == 6 and emb.last_stats_["n_unique"] == 1
    only_empty = emb.encode(["", " "])
    assert only_empty.shape == (2, 384) and not only_empty.any()
    assert emb.encode([]).shape == (0, 384)


def test_bytes_and_non_utf8_are_decoded(cpu_embedder):
    emb = cpu_embedder
    out = emb.encode(
        [b"caf\xc3\xa9 cr\xc3\xa8me", "café crème", b"bad \xff\xfe bytes", "bad \ufffd\ufffd bytes"]
    )
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[2], out[3], atol=1e-6)
    # a lone surrogate (e.g. from surrogateescape) cannot reach the Rust tokenizer as is
    sur = emb.encode(["bad \udcff surrogate", "bad ? surrogate", "fine text"])
    np.testing.assert_allclose(sur[0], sur[1], atol=1e-6)
    assert np.isfinite(sur).all() and np.isclose(np.linalg.norm(sur[2]), 1.0, atol=1e-3)
    # other inputs: a single str is one text, numbers go through str, numpy/pyarrow arrays work
    assert emb.encode("Great product!").shape == (1, 384)
    np.testing.assert_allclose(emb.encode([42]), emb.encode(["42"]), atol=1e-6)
    arr = emb.encode(pa.array(["Love it", None]))
    np.testing.assert_allclose(arr, emb.encode(np.array(["Love it", ""], dtype=object)), atol=1e-6)
    series = emb.encode(pd.Series(["Love it", None, pd.NA, np.nan]))
    assert not series[1:].any() and emb.last_stats_["n_empty"] == 3
    np.testing.assert_allclose(series[0], arr[0], atol=1e-6)
    with pytest.raises(UserInputError, match="one-dimensional"):
        emb.encode(np.array([["a", "b"]]))
    with pytest.raises(UserInputError, match="list of strings"):
        emb.encode(12)


def test_very_long_texts_are_truncated_and_counted(cpu_embedder):
    emb = cpu_embedder
    words = " ".join(f"w{i % 97}" for i in range(60_000))  # ~300k characters
    head = words[:3000]  # far more than 256 tokens
    blob = "x" * 50_000 + " tail words here"  # one enormous "word": the prefix shortcut must not apply
    spaces = " " * 40_000 + "hello there"  # the text starts after the character cut
    out = emb.encode([words, head, blob, spaces, "hello there"])
    assert emb.last_stats_["n_truncated"] == 2
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[3], out[4], atol=1e-6)
    ref = _sentence_transformer().encode([words, blob], normalize_embeddings=True)
    assert _cosine(out[[0, 2]], ref).min() >= 0.999


# ---------------------------------------------------------------------- model resolution


def test_resolve_default_and_directory(tmp_path):
    default = resolve_model(None)
    assert resolve_model("default") == default
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == default
    assert resolve_model(default) == default
    with pytest.raises(UserInputError) as err:
        resolve_model(tmp_path)  # a folder without config.json
    assert err.value.config_key == "text.model" and "config.json" in str(err.value)


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(UserInputError) as err:
        TextEmbedder(str(tmp_path / "no-such-model"))
    assert err.value.config_key == "text.model"
    assert "does not exist" in str(err.value) and "gpuseg[models]" in str(err.value)

    with pytest.raises(UserInputError) as err:
        resolve_model("some-org/not-a-cached-model")
    text = str(err.value)
    assert "not-a-cached-model" in text and "never downloads" in text and "text.model" in text

    monkeypatch.setattr(model_path_mod, "default_model_dir", lambda: None)
    with pytest.raises(UserInputError, match="not installed") as err:
        resolve_model(None)
    assert "pip install 'gpuseg[models]'" in str(err.value)


def test_hub_name_is_found_in_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    commit = "a" * 40
    repo = tmp_path / "models--acme--tiny-encoder"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_model("acme/tiny-encoder") == str(repo / "snapshots" / commit)
    with pytest.raises(UserInputError, match="local Hugging Face cache"):
        resolve_model("acme/other-encoder")


def test_unsupported_sentence_transformers_module(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]'
    )
    with pytest.raises(UserInputError, match="Dense"):
        read_model_info(tmp_path)


# ---------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "'batch_size' parameter"),
        ({"batch_size": 2.5}, "'batch_size' parameter"),
        ({"num_threads": -1}, "'num_threads' parameter"),
        ({"precision": "fp8"}, r"'precision' parameter of TextEmbedder must be a str among \{'auto', 'fp32'"),
        ({"max_length": 4096}, r"'max_length' parameter of TextEmbedder must be an int in the range \[2, 512\]"),
        ({"max_length": 1}, r"'max_length' parameter .* \[2, 512\] for this model. Got 1 instead"),
    ],
)
def test_parameter_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TextEmbedder(device="cpu", **kwargs)


def test_num_threads_is_restored():
    before = torch.get_num_threads()
    emb = TextEmbedder(device="cpu", num_threads=2)
    emb.encode(["hello"])
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------- OOM back-off


def test_oom_halves_the_batch_and_retries(cpu_embedder, monkeypatch):
    emb = cpu_embedder
    sample = [f"item {c}" for c in "abcdefghijklmnopqrst"]  # equal token lengths: one batch of 16
    expected = emb.encode(sample, batch_size=16)
    real_forward = emb._forward
    seen: list[int] = []

    def fake_forward(ids, mask):  # what a GPU with room for 4 texts per batch would do
        seen.append(len(ids))
        if len(ids) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(ids, mask)

    monkeypatch.setattr(emb, "_forward", fake_forward)
    got = emb.encode(sample, batch_size=16)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert emb.last_stats_["batch_size"] == 4
    assert emb.last_stats_["n_oom_retries"] == 2  # 16 -> 8 -> 4, then it stays at 4
    assert seen[:3] == [16, 8, 4] and max(seen[3:]) <= 4


def test_errors_propagate_and_oom_at_batch_one_is_raised(cpu_embedder, monkeypatch):
    emb = cpu_embedder

    def boom(ids, mask):
        raise RuntimeError("boom")

    monkeypatch.setattr(emb, "_forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        emb.encode([f"text number {i}" for i in range(300)], batch_size=2)

    def always_oom(ids, mask):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(emb, "_forward", always_oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        emb.encode(["a", "b", "c"], batch_size=2)


def test_batch_bounds_limit_rows_and_padding():
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(3, 256, size=5000))[::-1]
    bounds = embedder_mod._batch_bounds(lengths, 64, 1)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    for start, end in bounds:
        rows = lengths[start:end]
        assert 1 <= len(rows) <= 64
        if len(rows) > 1:
            assert len(rows) * rows[0] <= (1 + embedder_mod._MAX_PADDING) * rows.sum() + 1e-9
    # with a floor on rows (CUDA) batches stay large even where padding grows
    assert min(e - s for s, e in embedder_mod._batch_bounds(lengths, 64, 16)[:-1]) >= 16


def test_device_results_are_copied_back_in_flushes(monkeypatch):
    """The CUDA sink keeps results on the device and copies them back in large flushes."""
    monkeypatch.setattr(embedder_mod, "_FLUSH_ROWS", 4)
    out = np.zeros((6, 2), np.float32)
    sink = embedder_mod._Sink(out, torch.device("cuda"))  # CPU tensors stand in for CUDA ones
    sink.add(np.array([5, 0]), torch.tensor([[5.0, 5.0], [0.5, 0.5]]))
    assert not out.any()  # held back: no device sync per batch
    sink.add(np.array([3, 1, 2]), torch.tensor([[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]]))
    np.testing.assert_array_equal(out[[0, 1, 2, 3, 5], 0], [0.5, 1, 2, 3, 5])
    sink.add(np.array([4]), torch.tensor([[4.0, 4.0]]))
    assert out[4, 0] == 0
    sink.flush()
    np.testing.assert_array_equal(out[:, 1], [0.5, 1, 2, 3, 4, 5])
