"""Benchmark: gpuseg.TextEmbedder vs SentenceTransformer.encode on the same review/ticket texts.

Usage::

    python benchmarks/bench_text.py                 # CPU, 20,000 texts, real weights
    python benchmarks/bench_text.py --quick         # < 1 minute
    python benchmarks/bench_text.py --device cuda --n 300000 --random-weights
    python benchmarks/bench_text.py --export-config /tmp/minilm-config   # weightless copy

One run times, on identical texts and with the same torch thread count, (1) gpuseg with
de-duplication, (2) gpuseg without it and (3) ``SentenceTransformer.encode`` with its defaults
(batch size 32, fp32). It checks that the vectors agree (cosine) and writes
``benchmarks/results/text_<device>_<date>.json``.

``--random-weights`` builds a model of the same config with random weights (``AutoConfig`` +
``AutoModel.from_config``) and saves it beside the tokenizer in a temporary folder that both
libraries load: the speed is the same as with real weights, the vectors are not meaningful. It is
for machines where the real weights cannot be installed (``--model`` may then point to a folder
made by ``--export-config``, which holds the configs and tokenizer without the weights). The JSON
records which weights were used.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# _common first: it puts the repository root on sys.path for the gpuseg import
from _common import library_versions, machine_info, result_path, sync, utc_now, write_result

from gpuseg.text import TextEmbedder, resolve_model

# ---------------------------------------------------------------------- corpus

_SHORT = [
    "Great product!", "Love it", "Works as expected.", "Terrible.", "Fast delivery, thanks",
    "Not worth the money", "Five stars", "ok", "Where is my order?", "Please cancel my order",
    "Refund please", "Arrived broken", "Excellent quality", "Would buy again!", "meh",
    "Thanks for the quick help", "Still waiting for a reply", "Perfect fit", "Too small",
    "Battery died after a week",
]
_SHORT_TAILS = [
    "", "- the {p} arrived {speed}.", "- {n} stars.", "(order #{order})", "- bought it for my {who}.",
    "{n}/10", "- used it for {n} days.", "- second {p} I buy.",
]
_PRODUCTS = ["blender", "jacket", "headphones", "coffee maker", "phone case", "backpack",
             "running shoes", "desk lamp", "vacuum cleaner", "smart watch", "kettle", "sofa"]
_OPENERS = [
    "I bought the {p} for my {who} last {when}.",
    "Ordered the {p} on {day} and it arrived {speed}.",
    "This is my second {p} from this shop.",
    "I have been using the {p} every day for {n} weeks now.",
    "Hello, I am writing about order #{order} ({p}).",
    "Hi team, my {p} stopped working after {n} days.",
]
_MIDDLES = [
    "The build quality is {adj} and it feels {adj2} in the hand.",
    "Setup took about {n} minutes and the instructions were {adj}.",
    "Customer service answered within {n} hours and was {adj}.",
    "The colour is slightly different from the pictures but I do not mind.",
    "It is a bit louder than I expected, especially on the highest setting.",
    "I contacted support twice and nobody has replied yet, which is {adj}.",
    "The package was damaged and the box was open when the courier left it at my door.",
    "Compared with my old {p} this one is much {adj2} and easier to clean.",
    "I was charged twice for the same order and I would like the extra payment refunded.",
    "The tracking number does not work and the delivery date has changed {n} times.",
    "For the price it is {adj}, although the cable could be longer.",
    "After the last update the app keeps crashing when I try to pair the device.",
]
_CLOSERS = [
    "Would recommend.", "I will not order again.", "Please advise how to proceed.",
    "Overall {adj}.", "Four stars because of the delay.", "Thanks in advance for your help.",
    "Can you send a replacement?", "Happy with the purchase.",
]
_FILL = dict(
    who=["wife", "husband", "son", "daughter", "office", "mum", "dad"],
    when=["week", "month", "Christmas", "summer"],
    day=["Monday", "Tuesday", "Friday", "Sunday"],
    speed=["the next day", "a week late", "on time", "two days early"],
    adj=["great", "disappointing", "excellent", "poor", "fine", "unacceptable", "decent"],
    adj2=["solid", "cheap", "lighter", "sturdier", "quieter", "smoother"],
)


def make_corpus(n: int, *, seed: int = 0, dup_rate: float = 0.3) -> list[str]:
    """Reviews and tickets: ~40% short, ~40% a few sentences, ~20% long; ~dup_rate duplicates.

    Duplicates are drawn like real data: mostly short stock phrases, sometimes a whole review
    posted twice or a templated ticket.
    """
    rng = np.random.default_rng(seed)

    def fill(template: str) -> str:
        out = template
        for key, values in _FILL.items():
            while "{" + key + "}" in out:
                out = out.replace("{" + key + "}", str(rng.choice(values)), 1)
        out = out.replace("{p}", str(rng.choice(_PRODUCTS)))
        out = out.replace("{n}", str(int(rng.integers(2, 30))))
        return out.replace("{order}", str(int(rng.integers(10_000, 99_999))))

    def fresh(kind: float) -> str:
        if kind < 0.4:
            return fill(f"{rng.choice(_SHORT)} {rng.choice(_SHORT_TAILS)}".strip())
        n_mid = int(rng.integers(1, 4)) if kind < 0.8 else int(rng.integers(6, 22))
        parts = [fill(str(rng.choice(_OPENERS)))]
        parts += [fill(str(rng.choice(_MIDDLES))) for _ in range(n_mid)]
        parts.append(fill(str(rng.choice(_CLOSERS))))
        return " ".join(parts)

    texts: list[str] = []
    seen: set[str] = set()
    for _ in range(n):
        if texts and rng.random() < dup_rate:
            pick = rng.random() < 0.6
            text = str(rng.choice(_SHORT)) if pick else texts[int(rng.integers(len(texts)))]
        else:
            kind = rng.random()
            for _ in range(20):  # fresh texts are new, so dup_rate sets the share of duplicates
                text = fresh(kind)
                if text not in seen:
                    break
        seen.add(text)
        texts.append(text)
    return texts


# ---------------------------------------------------------------------- helpers


def export_config(model_dir: str, target: Path) -> Path:
    """Copy a model folder without its weight files (for --random-weights elsewhere)."""
    src = Path(model_dir)
    for item in src.rglob("*"):
        if item.is_file() and item.suffix not in (".safetensors", ".bin", ".h5", ".msgpack", ".onnx"):
            dest = target / item.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dest)
    return target


def random_weights_dir(model_dir: str, workdir: Path, seed: int, num_layers: int | None = None) -> Path:
    """A folder with the model's configs and tokenizer and random weights of the same config.

    ``num_layers`` changes the depth (e.g. 12 for the cost of a 12-layer encoder of the same width,
    such as the multilingual paraphrase MiniLM-L12), everything else kept.
    """
    from transformers import AutoConfig, AutoModel

    target = export_config(model_dir, workdir / "random-model")
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(str(target), local_files_only=True)
    if num_layers:
        config.num_hidden_layers = int(num_layers)
    AutoModel.from_config(config).save_pretrained(str(target))
    return target


def timed(fn, device: torch.device) -> tuple[np.ndarray, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 texts: < 1 minute on 2 quiet CPU cores")
    parser.add_argument("--n", type=int, default=None, help="texts (default 20000 on CPU, 300000 on CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--model", default=None, help="model name or folder (default: packaged MiniLM)")
    parser.add_argument("--random-weights", action="store_true", help="same config, random weights")
    parser.add_argument("--num-layers", type=int, default=None,
                        help="with --random-weights: this many encoder layers instead of the model's")
    parser.add_argument("--dtype", default="auto", help="gpuseg precision: auto, fp32, fp16, bf16")
    parser.add_argument("--batch-size", type=int, default=None, help="gpuseg batch size (default: its own)")
    parser.add_argument("--dup-rate", type=float, default=0.3, help="share of duplicated texts")
    parser.add_argument("--skip-st", action="store_true", help="do not time sentence-transformers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--export-config", type=Path, default=None, help="write a weightless model copy and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    model_dir = resolve_model(args.model)
    if args.export_config:
        print(f"wrote {export_config(model_dir, args.export_config)}")
        return {}

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    n = args.n or (500 if args.quick else (300_000 if device.type == "cuda" else 20_000))
    texts = make_corpus(n, seed=args.seed, dup_rate=args.dup_rate)

    with tempfile.TemporaryDirectory() as tmp:
        if args.random_weights or not any(Path(model_dir).glob("*.safetensors")) and not any(Path(model_dir).glob("*.bin")):
            model_dir = str(random_weights_dir(model_dir, Path(tmp), args.seed, args.num_layers))
            weights = "random-same-config" + (f", {args.num_layers} layers" if args.num_layers else "")
        else:
            weights = "real"
        result = run(args, device, model_dir, texts, weights)

    out = write_result(result_path("text", device, args.quick, args.out), result)
    print(json.dumps({k: result[k] for k in ("device", "weights", "texts_per_s", "ratios")}, indent=2))
    print(f"wrote {out}")
    return result


def run(args, device: torch.device, model_dir: str, texts: list[str], weights: str) -> dict:
    kw = dict(device=device, precision=args.dtype, batch_size=args.batch_size)
    embedder = TextEmbedder(model_dir, dedupe=True, **kw)
    warm = texts[: min(len(texts), 512)]
    embedder.encode(warm)  # first-call costs (allocator, kernels) out of the timings
    tokens = embedder._tokenize(texts)[1]

    speeds: dict[str, float] = {}
    stats: dict[str, dict] = {}
    st_out = None
    if not args.skip_st:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model_dir, device=str(device), local_files_only=True)
        st.encode(warm)
        st_out, sec = timed(lambda: st.encode(texts), device)  # its defaults: batch 32, fp32
        speeds["sentence_transformers"] = len(texts) / sec
        del st

    embedder.dedupe = True
    ours, sec = timed(lambda: embedder.encode(texts), device)
    speeds["gpuseg_dedupe"] = len(texts) / sec
    stats["gpuseg_dedupe"] = dict(embedder.last_stats_)

    embedder.dedupe = False
    ours_nd, sec = timed(lambda: embedder.encode(texts), device)
    speeds["gpuseg_no_dedupe"] = len(texts) / sec
    stats["gpuseg_no_dedupe"] = dict(embedder.last_stats_)

    agreement = {"gpuseg_dedupe_vs_no_dedupe_min_cosine": float((ours * ours_nd).sum(1).min())}
    ratios = {}
    if st_out is not None:
        st_norm = st_out / np.linalg.norm(st_out, axis=1, keepdims=True)
        agreement["gpuseg_vs_st_min_cosine"] = float((ours * st_norm).sum(1).min())
        ratios = {
            "gpuseg_dedupe_vs_st": speeds["gpuseg_dedupe"] / speeds["sentence_transformers"],
            "gpuseg_no_dedupe_vs_st": speeds["gpuseg_no_dedupe"] / speeds["sentence_transformers"],
        }
    return {
        "benchmark": "text_embedding",
        "date": utc_now(),
        "device": str(device),
        "machine": machine_info(device),
        "versions": library_versions("sentence-transformers", "tokenizers"),
        "weights": weights,
        "model": embedder.model_path if weights == "real" else f"random weights, config of {args.model or 'default'}",
        "precision_gpuseg": embedder.precision,
        "precision_st": "fp32 (its default)",
        "batch_size_gpuseg": stats["gpuseg_dedupe"]["batch_size"],
        "batch_size_st": 32,
        "max_length": embedder.max_length,
        "corpus": {
            "n_texts": len(texts),
            "n_distinct": len(set(texts)),
            "duplicate_share": 1 - len(set(texts)) / len(texts),
            "tokens_mean": float(tokens.mean()),
            "tokens_median": float(np.median(tokens)),
            "tokens_p90": float(np.percentile(tokens, 90)),
            "share_over_max_length": float((tokens >= embedder.max_length).mean()),
        },
        "texts_per_s": speeds,
        "ratios": ratios,
        "agreement": agreement,
        "gpuseg_stats": stats,
        "note": "one run each on the same texts; on a shared machine the numbers are provisional",
    }


if __name__ == "__main__":
    main()
