"""Journey encoder vs unigram and first-order Markov on real Online Retail II event sequences.

Sequences are built from the real invoices (../shared/data/online_retail) in four ways:

* ``lines``: one event per invoice line; event = purchase/return, category = product group
  (first three characters of the stock code), amount = quantity x price;
* ``lines_group``: the same lines as a product clickstream; the event *is* the product group
  (returns as one ``return`` event), so the next-event task is "which product group next";
* ``invoices``: one event per invoice; event = purchase/return, amount = invoice total,
  category = the invoice's most frequent product group;
* ``invoices_group``: one event per invoice, the event being the invoice's main product group
  (or ``return``).

Customers are sampled (``--customers``), split 70/10/20 into train / validation / test by
seed; vocabularies, the encoder and both baselines see only the training customers (the
validation customers stop training early and tune the Markov chain's smoothing), and every
score is over the same next-event targets of the test customers: accuracy and log-loss (nats).
On a shared 2-core CPU the encoder is small (hidden 64, one layer) and trains a few epochs.

    python benchmarks/bench_journey_real.py [--customers 10000] [--epochs 12] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import ROOT, library_versions, machine_info, result_path, utc_now, write_result

from gpuseg.data.events import to_microseconds
from gpuseg.journey import JourneyEncoder, SequenceBuilder
from gpuseg.journey.baselines import MarkovBaseline, next_event_scores
from gpuseg.journey.sequences import GAP

DATA = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail_II_2009_2011_combined.csv.gz"
AS_OF = "2011-09-01"  # the cut-off of conf/data/online_retail.yaml
TOP_GROUPS = 30       # product groups kept as events in the *_group clickstreams; the rest is "other"
MIN_CONTEXT = 5       # a richer context predicts only where training saw it this often; else Markov's pick


def read_lines(path: Path, n_customers: int, seed: int) -> pa.Table:
    """Invoice lines of ``n_customers`` random customers with a line before AS_OF, in file order."""
    raw = pacsv.read_csv(path)
    raw = raw.filter(pc.is_valid(raw["Customer ID"]))
    ts = raw["InvoiceDate"].cast(pa.timestamp("us"))
    raw = raw.filter(pc.less(ts, pa.scalar(to_microseconds(AS_OF), pa.timestamp("us"))))
    ids = np.unique(raw["Customer ID"].to_numpy())
    chosen = np.random.default_rng(seed).choice(ids, size=min(n_customers, len(ids)), replace=False)
    raw = raw.filter(pc.is_in(raw["Customer ID"], value_set=pa.array(chosen)))
    is_return = pc.or_(pc.starts_with(raw["Invoice"], "C"), pc.less(raw["Quantity"], 0))
    group = pc.utf8_upper(pc.utf8_slice_codeunits(raw["StockCode"].cast(pa.string()), 0, 3))
    return pa.table({
        "customer_id": pc.cast(raw["Customer ID"], pa.string()),
        "timestamp": raw["InvoiceDate"].cast(pa.timestamp("us")),
        "invoice": raw["Invoice"],
        "event_type": pc.if_else(is_return, "return", "purchase"),
        "amount": pc.multiply(raw["Quantity"].cast(pa.float64()), raw["Price"]),
        "category": group,
    })


def _top_groups(lines: pa.Table, train_ids: pa.Array) -> pa.Array:
    train = lines.filter(pc.is_in(lines["customer_id"], value_set=train_ids))
    counts = pc.value_counts(train["category"]).to_pylist()
    return pa.array([c["values"] for c in sorted(counts, key=lambda c: -c["counts"])[:TOP_GROUPS]])


def _grouped(table: pa.Table, top: pa.Array) -> pa.Table:
    """The event becomes the product group (top groups, else "other"); returns stay "return"."""
    group = pc.if_else(pc.is_in(table["category"], value_set=top), table["category"], "other")
    event = pc.if_else(pc.equal(table["event_type"], "return"), "return", group)
    return table.set_column(table.schema.get_field_index("event_type"), "event_type", event)


def invoices(lines: pa.Table) -> pa.Table:
    """One event per invoice: its time, type, total amount and most frequent product group."""
    agg = lines.group_by(["customer_id", "invoice", "event_type"]).aggregate(
        [("timestamp", "min"), ("amount", "sum")])
    modes = lines.group_by(["invoice", "category"]).aggregate([("amount", "count")])
    modes = modes.sort_by([("invoice", "ascending"), ("amount_count", "descending"), ("category", "ascending")])
    first = np.r_[True, modes["invoice"].to_numpy(zero_copy_only=False)[1:]
                  != modes["invoice"].to_numpy(zero_copy_only=False)[:-1]]
    modes = modes.filter(pa.array(first)).select(["invoice", "category"])
    agg = agg.join(modes, "invoice")
    return pa.table({"customer_id": agg["customer_id"], "timestamp": agg["timestamp_min"],
                     "event_type": agg["event_type"], "amount": agg["amount_sum"],
                     "category": agg["category"]}).sort_by([("timestamp", "ascending"), ("customer_id", "ascending")])


def split(ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.random.default_rng([seed, 5]).permutation(len(ids))
    n_test, n_val = round(len(ids) * 0.2), round(len(ids) * 0.1)
    return np.sort(rows[n_test + n_val:]), np.sort(rows[n_test:n_test + n_val]), np.sort(rows[:n_test])


def _contexts(seqs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per step with a next step: context codes richer than the current event, and the next event.

    Keys: the current event with the previous one; with whether it opened a new visit (a gap
    since the previous event); with the length of its run of identical events (capped at 6).
    """
    types = seqs.categorical[..., 0].astype(np.int64)
    v = int(seqs.vocab_sizes[0])
    valid = np.arange(seqs.max_len - 1)[None, :] < (seqs.lengths - 1)[:, None]
    cur, nxt = types[:, :-1], types[:, 1:]
    prev = np.concatenate([np.zeros_like(types[:, :1]), types[:, :-2]], axis=1)
    new_visit = (seqs.continuous[:, :-1, GAP] > 0).astype(np.int64)
    run = np.ones_like(types)
    for t in range(1, types.shape[1]):
        run[:, t] = np.where(types[:, t] == types[:, t - 1], run[:, t - 1] + 1, 1)
    keys = {"previous two events": cur * v + prev, "event and new visit": cur * 2 + new_visit,
            "event and run length": cur * 7 + np.minimum(run[:, :-1], 6)}
    return {name: key[valid] for name, key in keys.items()}, nxt[valid]


def context_ceilings(train, test, validation) -> dict:
    """Top-1 accuracy of count-based predictors that see more than the current event.

    Each predicts the most frequent next event of its context over the training steps (where
    the context was seen at least MIN_CONTEXT times, else the Markov chain's pick). If none of
    them beats first-order Markov, the data hold no top-1 signal in that much context, and a
    tie in accuracy is the data's ceiling rather than the encoder's failure.
    """
    markov = MarkovBaseline().fit(train, validation)
    fallback, actual = markov.predict_next(test)
    train_keys, train_next = _contexts(train)
    test_keys, _ = _contexts(test)
    v = int(train.vocab_sizes[0])
    out = {"markov": float(np.mean(fallback == actual))}
    for name, keys in train_keys.items():
        pairs, counts = np.unique(keys * v + train_next, return_counts=True)
        key_of, next_of = pairs // v, pairs % v
        order = np.lexsort((-counts, key_of))                 # per context, its most frequent next first
        first = np.r_[True, key_of[order][1:] != key_of[order][:-1]]
        known, best = key_of[order][first], next_of[order][first]
        seen = np.bincount(np.searchsorted(known, key_of), weights=counts, minlength=len(known))
        where = np.clip(np.searchsorted(known, test_keys[name]), 0, len(known) - 1)
        use = (known[where] == test_keys[name]) & (seen[where] >= MIN_CONTEXT)
        predicted = np.where(use, best[where], fallback)
        out[name] = float(np.mean(predicted == actual))
    return out


def run_one(name: str, events: pa.Table, ids: pa.Array, args) -> dict:
    """Sequences, encoder and baselines on one construction; scores on the test customers."""
    train, val, test = split(np.asarray(ids), args.seed)
    builder = SequenceBuilder(max_len=args.max_len, as_of=to_microseconds(AS_OF),
                              categorical=("event_type", "category")).fit(events, ids.take(pa.array(train)))
    seqs = builder.transform(events, ids)
    train, val, test = (r[seqs.lengths[r] > 0] for r in (train, val, test))
    enc = JourneyEncoder(hidden_size=args.hidden, num_layers=1, out_dim=32, batch_size=args.batch, epochs=args.epochs,
                         lr=3e-3, patience=2, num_threads=args.threads, seed=args.seed,
                         gap_weight=args.aux_weights, mix_weight=args.aux_weights)
    t0 = time.perf_counter()
    enc.fit(seqs, train_rows=train, validation_rows=val)
    seconds = time.perf_counter() - t0
    scores = next_event_scores(enc, seqs.subset(train), seqs.subset(test), seqs.subset(val))
    share = enc.network_share_
    enc.net_.network_share.fill_(1.0)  # the network alone, before its interpolation with the chain
    alone = next_event_scores(enc, seqs.subset(train), seqs.subset(test), seqs.subset(val))
    enc.net_.network_share.fill_(share)
    lengths = seqs.lengths[seqs.lengths > 0]
    ceilings = context_ceilings(seqs.subset(train), seqs.subset(test), seqs.subset(val))
    result = {"construction": name, "n_events": int(events.num_rows), "customers": int(len(ids)),
              "split": {"train": int(len(train)), "validation": int(len(val)), "test": int(len(test))},
              "vocab_sizes": dict(zip(seqs.categorical_names, seqs.vocab_sizes, strict=True)),
              "mean_events_per_customer": float(seqs.n_events[seqs.n_events > 0].mean()),
              "mean_length_used": float(lengths.mean()), **scores, "context_accuracy": ceilings,
              "network_share": share,
              "network_alone": {key: alone[key] for key in ("accuracy", "top_k_accuracy", "log_loss", "versus_markov")},
              "train_seconds": round(seconds, 2), "epochs_run": len(enc.history_), "best_epoch": enc.best_epoch_}
    print(f"{name:15s} steps {scores['n_steps']:7d} mean len {scores['mean_length']:6.2f} | acc "
          + " ".join(f"{k} {v:.4f}" for k, v in scores["accuracy"].items()) + " | log-loss "
          + " ".join(f"{k} {v:.4f}" for k, v in scores["log_loss"].items()) + f" | {seconds:.0f}s", flush=True)
    print(f"{'':15s} top-{scores['top_k_accuracy']['k']} "
          + " ".join(f"{k} {scores['top_k_accuracy'][k]:.4f}" for k in ("model", "unigram", "markov"))
          + f" | network share {share:.1f}, alone: acc {alone['accuracy']['model']:.4f} "
          f"log-loss {alone['log_loss']['model']:.4f}" + " | context accuracy " + " ".join(f"{k}: {v:.4f}" for k, v in ceilings.items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=10000, help="at most this many (all of them: about 5,300)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--aux-weights", type=float, default=0.1,
                        help="weight of the next-gap and transition-mix terms of the objective")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="constructions to run")
    parser.add_argument("--quick", action="store_true", help="800 customers, 2 epochs")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/journey_real_cpu_<date>.json)")
    args = parser.parse_args()
    if args.quick:
        args.customers, args.epochs = 800, 2
    t0 = time.perf_counter()
    lines = read_lines(DATA, args.customers, args.seed)
    ids = pa.array(sorted(set(lines["customer_id"].to_pylist())))
    train_ids = ids.take(pa.array(split(np.asarray(ids), args.seed)[0]))
    top = _top_groups(lines, train_ids)
    per_invoice = invoices(lines)
    constructions = {"lines": lines, "lines_group": _grouped(lines, top), "invoices": per_invoice,
                     "invoices_group": _grouped(per_invoice, top)}
    results = [run_one(name, table, ids, args) for name, table in constructions.items()
               if args.only is None or name in args.only]
    payload = {
        "benchmark": "journey_real", "date": utc_now(), "machine": machine_info("cpu", args.threads),
        "versions": library_versions(), "data": str(DATA.name), "as_of": AS_OF,
        "settings": {"customers": args.customers, "epochs": args.epochs, "hidden_size": args.hidden,
                     "num_layers": 1, "max_len": args.max_len, "batch_size": args.batch, "aux_weights": args.aux_weights,
                     "seed": args.seed, "split": "70/10/20 customers", "threads": args.threads,
                     "torch": torch.__version__},
        "note": ("small CPU run: the customers with an invoice line before as_of and a few epochs on a shared "
                 "2-core machine; log-loss in nats; Markov = first-order chain smoothed towards the unigram, "
                 "its pseudo-count tuned on the validation customers; model = the encoder's next-event "
                 "distribution interpolated with that chain (network_share tuned on the validation "
                 "customers), network_alone = share 1; context_accuracy = count-based predictors with "
                 "more context than the current event (fall back to Markov where seen < 5 times)"),
        "results": results,
        "summary": {r["construction"]: {"accuracy": r["accuracy"], "top_k_accuracy": r["top_k_accuracy"],
                                        "log_loss": r["log_loss"], "context_accuracy": r["context_accuracy"],
                                        "versus_markov": {k: v["verdict"] for k, v in r["versus_markov"].items()},
                                        "too_short": r["too_short"]} for r in results},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = result_path("journey_real", "cpu", args.quick, args.out)
    write_result(path, payload)
    print(path)


if __name__ == "__main__":
    main()
