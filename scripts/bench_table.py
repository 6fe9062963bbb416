"""Print the README's ``gpuseg bench`` tables (markdown) from the result files.

    python scripts/bench_table.py                      # benchmarks/results of this checkout
    python scripts/bench_table.py path/to/results > table.md

The same as ``gpuseg bench bench.table_only=true bench.results_dir=...``: the newest result of
each (device, size), the scaling over N and the peers' ratios where a run has them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpuseg.cli import main as gpuseg_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", nargs="?", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logs = tempfile.mkdtemp(prefix="gpuseg_bench_table_")  # Hydra's run folder: nothing to keep
    try:
        return gpuseg_main(["bench", "bench.table_only=true", f"bench.results_dir={args.results_dir.resolve()}",
                            f"paths.work_dir={logs}", f"hydra.run.dir={logs}", "hydra.output_subdir=null"])
    finally:
        # Hydra left a log file handler in the folder about to go: a later log line would fail
        for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values()):
            for handler in list(getattr(logger, "handlers", [])):
                if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(logs):
                    logger.removeHandler(handler)
                    handler.close()
        shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
