"""``gpuseg <job> [hydra overrides]``: one Hydra app per job, configs shipped in gpuseg/conf."""

from __future__ import annotations

import logging
import sys

from gpuseg.jobs import registry
from gpuseg.runtime.errors import GpusegError

log = logging.getLogger("gpuseg")


def _usage() -> str:
    width = max(len(name) for name in registry.JOBS)
    lines = ["usage: gpuseg <job> [hydra overrides, e.g. paths.work_dir=my_project device=cpu]",
             "       gpuseg <job> --help    (the job's Hydra help: its config and overrides)", "", "jobs:"]
    for name, (module, description) in registry.JOBS.items():
        planned = "" if module else "  (planned)"
        lines.append(f"  {name:<{width}}  {description}{planned}")
    return "\n".join(lines)


def _report(job: str, result: dict) -> None:
    """The last lines a user sees: where the outputs are."""
    if job == "run":
        print("\ngpuseg run finished. Outputs:")
        for key, value in result.get("outputs", {}).items():
            print(f"  {key}: {value}")
        report = result.get("outputs", {}).get("profile.report_path")
        if report:
            print(f"\nOpen the segment report: {report}")
    elif isinstance(result, dict):
        for key, value in result.items():
            if key.endswith(("_path", "_dir")):
                print(f"{key}: {value}")


def _log_to_files(message: str) -> None:
    """Record an error in the run's log file without echoing it a second time on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gpuseg`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    job, overrides = argv[0], argv[1:]
    if job not in registry.JOBS:
        print(f"gpuseg: unknown job {job!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if not registry.available(job):
        print(f"gpuseg: job {job!r} is planned but not available in this version", file=sys.stderr)
        return 2

    import hydra
    from omegaconf import DictConfig

    module = registry.load(job)
    outcome: dict = {}

    def task(cfg: DictConfig) -> None:
        try:
            outcome["result"] = module.run(cfg)
        except GpusegError as exc:
            # a user's mistake: a message on stderr (and in the run's log file), never a traceback
            _log_to_files(f"gpuseg {job}: error: {exc}")
            print(f"gpuseg {job}: error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        _report(job, outcome["result"])

    task.__name__ = job
    app = hydra.main(version_base="1.3", config_path="conf", config_name=job)(task)
    saved = sys.argv
    sys.argv = [f"gpuseg {job}", *overrides]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
