"""Benchmark: the static text model (``text.model=static``) against the transformer, same texts.

Usage::

    python benchmarks/bench_text_static.py                  # 3000 synthetic customers
    python benchmarks/bench_text_static.py --n 1000 --quick # smaller, file name ends in _quick
    python benchmarks/bench_text_static.py --cache-dir DIR  # reuse a distilled model (its recorded time)

Generates a synthetic project (:func:`gpuseg.data.synthetic.generate_synthetic`, planted personas),
then embeds its texts with the default transformer (:class:`gpuseg.text.TextEmbedder`) and with a
static model distilled from that transformer (:class:`gpuseg.text.StaticEmbedder`), both on the
CPU. Reports:

* speed: texts/s of each over the whole corpus (de-duplicated, as the text job runs) and the ratio;
  the distillation time (paid once per work dir);
* neighbour overlap: for a sample of distinct texts, the mean share of each text's 10 nearest
  neighbours (cosine, within the sample) that both embeddings agree on; chance level is recorded;
* segment quality: per customer the mean of its text vectors (customers without text: zeros), then
  :class:`gpuseg.cluster.MiniBatchKMeans` with k = the number of planted personas, scored by the
  adjusted Rand index against the personas (mean over seeds), for each embedding; also the ARI
  between the two segmentations.

Writes ``benchmarks/results/text_static_cpu_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from _common import library_versions, machine_info, result_path, utc_now, write_result

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.cluster.metrics import adjusted_rand_index
from gpuseg.data.synthetic import generate_synthetic
from gpuseg.text import StaticEmbedder, TextEmbedder

log = logging.getLogger("bench_text_static")


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's ``k`` nearest neighbours (cosine, self excluded) common to ``a`` and ``b``."""
    def knn(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    na, nb = knn(a), knn(b)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(na, nb, strict=True)]))


def customer_means(vectors: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per-customer mean of its text vectors; zeros for customers without text."""
    sums = np.zeros((n, vectors.shape[1]), np.float64)
    np.add.at(sums, owner, vectors)
    counts = np.bincount(owner, minlength=n)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def segment_ari(block: np.ndarray, truth: np.ndarray, k: int, seeds: list[int]) -> tuple[float, list[np.ndarray]]:
    """Mean ARI over ``seeds`` of k-means on ``block`` against ``truth``, and the labels of each seed."""
    scores, labels = [], []
    for seed in seeds:
        km = MiniBatchKMeans(n_clusters=k, n_init=3, device="cpu", random_state=seed).fit(block)
        lab = np.asarray(km.labels_, dtype=np.int64)
        labels.append(lab)
        scores.append(adjusted_rand_index(torch.as_tensor(lab), torch.as_tensor(truth)))
    return float(np.mean(scores)), labels


def timed_encode(embedder, texts: list[str]) -> tuple[np.ndarray, float]:
    embedder.encode(texts[:64])  # warm-up (lazy init, allocator)
    t0 = time.perf_counter()
    vectors = embedder.encode(texts)
    return vectors, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="synthetic customers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=1000, help="distinct texts for the neighbour overlap")
    parser.add_argument("--pca-dims", type=int, default=256)
    parser.add_argument("--cache-dir", default=None, help="static model folder (reused when it matches)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_synthetic(data, n_customers=args.n, seed=args.seed)
        texts_table = pq.read_table(data / "texts.parquet", columns=["customer_id", "text"])
        truth_table = pq.read_table(data / "ground_truth.parquet")
        texts = texts_table["text"].to_pylist()
        owner = pc.index_in(texts_table["customer_id"], value_set=truth_table["customer_id"]).to_numpy()
        truth = truth_table["persona_id"].to_numpy().astype(np.int64)
        k = int(len(np.unique(truth)))
        log.info("%d customers, %d texts (%d distinct), %d personas", args.n, len(texts), len(set(texts)), k)

        transformer = TextEmbedder(device="cpu")
        t_vec, t_sec = timed_encode(transformer, texts)
        log.info("transformer: %.1fs (%.0f texts/s)", t_sec, len(texts) / t_sec)

        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp) / "static_model"
        t0 = time.perf_counter()
        static = StaticEmbedder(cache_dir=cache, pca_dims=args.pca_dims, device="cpu")
        open_sec = time.perf_counter() - t0
        s_vec, s_sec = timed_encode(static, texts)
        log.info("static: distilled %s in %.1fs; encode %.2fs (%.0f texts/s)", static.distilled_,
                 static.distill_seconds_, s_sec, len(texts) / s_sec)

        rng = np.random.default_rng(args.seed)
        distinct = sorted(set(texts))
        pick = rng.choice(len(distinct), size=min(args.sample, len(distinct)), replace=False)
        sample = [distinct[i] for i in pick]
        overlap = neighbour_overlap(transformer.encode(sample), static.encode(sample))

        seeds = [0, 1, 2]
        ari_t, lab_t = segment_ari(customer_means(t_vec, owner, args.n), truth, k, seeds)
        ari_s, lab_s = segment_ari(customer_means(s_vec, owner, args.n), truth, k, seeds)
        agreement = float(np.mean([adjusted_rand_index(torch.as_tensor(a), torch.as_tensor(b))
                                   for a, b in zip(lab_t, lab_s, strict=True)]))
        has_text = np.bincount(owner, minlength=args.n) > 0

    payload = {
        "benchmark": "text_static",
        "date": utc_now(),
        "device": "cpu",
        "machine": machine_info(),
        "versions": library_versions(),
        "corpus": {"n_customers": args.n, "customers_with_text": int(has_text.sum()), "n_texts": len(texts),
                   "n_distinct": len(distinct), "n_personas": k, "seed": args.seed},
        "transformer": {"model": transformer.model_path, "dim": transformer.dim, "max_length": transformer.max_length,
                        "seconds": round(t_sec, 3), "texts_per_s": round(len(texts) / t_sec, 1)},
        "static": {"base_model": static.base_model_path, "dim": static.dim, "pca_dims": args.pca_dims,
                   "max_length": static.max_length, "distilled_in_this_run": static.distilled_,
                   "distill_seconds": static.distill_seconds_, "open_seconds": round(open_sec, 3),
                   "seconds": round(s_sec, 4), "texts_per_s": round(len(texts) / s_sec, 1)},
        "speedup_static_vs_transformer": round(t_sec / s_sec, 1),
        "neighbour_overlap": {"k": 10, "sample": len(sample), "mean_shared_fraction": round(overlap, 4),
                              "chance_level": round(10 / (len(sample) - 1), 4)},
        "segment_ari": {"method": "per-customer mean text vector, MiniBatchKMeans k = n personas, n_init=3, "
                                  "mean over seeds", "seeds": seeds,
                        "transformer": round(ari_t, 4), "static": round(ari_s, 4),
                        "transformer_vs_static_agreement": round(agreement, 4)},
    }
    path = write_result(result_path("text_static", "cpu", args.quick, args.out), payload)
    log.info("wrote %s", path)
    print(path)


if __name__ == "__main__":
    main()
