"""scikit-learn's ``check_estimator`` on ``gpuseg.MiniBatchKMeans`` and ``ChurnModel``: pass count, rate, failures.

Usage::

    python benchmarks/check_estimators.py                 # CPU, about 30 s
    python benchmarks/check_estimators.py --device cuda   # on a GPU (writes check_estimator_cuda.json)

Runs every check scikit-learn has for a clusterer/transformer (``legacy=True``, the default) with
``on_fail=None``, so a failing check is recorded instead of stopping the run, on two instances:

* ``defaults``: ``MiniBatchKMeans(device=...)``, the constructor's defaults;
* ``fast``: ``n_init=1, max_iter=10, batch_size=64, random_state=0``, the settings that
  ``tests/test_sklearn_conformance.py`` uses to keep its run short;
* ``churn_model``: ``ChurnModel(device=...)``, the churn classifier (a binary classifier only).

The top-level counts are those of ``defaults``. The rate is passed / (passed + failed); skipped
checks (e.g. the array-API check, which needs ``array_api_support``) are listed apart. Prints a
summary and writes ``benchmarks/results/check_estimator.json`` (``check_estimator_cuda.json``
for a CUDA device) with the scikit-learn version, date and machine.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter

import sklearn
from _common import RESULTS, library_versions, machine_info, utc_now, write_result  # sets sys.path
from sklearn.utils.estimator_checks import check_estimator

from gpuseg import MiniBatchKMeans
from gpuseg.value import ChurnModel

FAST = {"n_init": 1, "max_iter": 10, "batch_size": 64, "random_state": 0}


def _first_line(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def run_checks(estimator) -> dict:
    """Every check on ``estimator``; counts, rate and the failed/skipped checks."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None, on_skip=None)
    seconds = time.perf_counter() - t0
    status = Counter(r["status"] for r in results)
    ran = status["passed"] + status["failed"]
    return {
        "estimator": repr(estimator),
        "passed": status["passed"],
        "failed": status["failed"],
        "skipped": status["skipped"],
        "total": ran,
        "rate": round(status["passed"] / ran, 4) if ran else None,
        "failed_checks": [{"check": r["check_name"], "error": _first_line(r["exception"])}
                          for r in results if r["status"] == "failed"],
        "skipped_checks": [{"check": r["check_name"], "reason": _first_line(r["exception"])}
                           for r in results if r["status"] == "skipped"],
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="device of the estimators (default: cpu)")
    ap.add_argument("--out", default=None, help="result file (default: benchmarks/results/check_estimator[_cuda].json)")
    args = ap.parse_args(argv)
    runs = {
        "defaults": run_checks(MiniBatchKMeans(device=args.device)),
        "fast": run_checks(MiniBatchKMeans(3, device=args.device, **FAST)),
        "churn_model": run_checks(ChurnModel(device=args.device)),
    }
    main_run = runs["defaults"]
    payload = {
        "benchmark": "check_estimator",
        "date": utc_now(),
        "sklearn": sklearn.__version__,
        "device": args.device,
        "machine": machine_info(args.device),
        "versions": library_versions("scikit-learn", "scipy", "pandas"),
        **{k: main_run[k] for k in ("estimator", "passed", "failed", "skipped", "total", "rate",
                                    "failed_checks", "skipped_checks")},
        "runs": runs,
        "notes": "rate = passed / (passed + failed); skipped checks are not counted. Checks "
                 "run with legacy=True (all of them), on_fail=None, warnings silenced.",
    }
    device_type = str(args.device).split(":", 1)[0]
    out = args.out or RESULTS / ("check_estimator.json" if device_type == "cpu"
                                 else f"check_estimator_{device_type}.json")
    path = write_result(out, payload)
    print(f"scikit-learn {sklearn.__version__}, device {args.device}")
    for name, r in runs.items():
        print(f"{name:9s} {r['estimator']}: {r['passed']}/{r['total']} passed "
              f"({r['rate']:.1%}), {r['skipped']} skipped, {r['seconds']} s")
        for f in r["failed_checks"]:
            print(f"    FAILED {f['check']}: {f['error']}")
        for s in r["skipped_checks"]:
            print(f"    skipped {s['check']}: {s['reason']}")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
