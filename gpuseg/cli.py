"""``gpuseg <job> [hydra overrides]``: one Hydra app per job, configs shipped in gpuseg/conf."""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from gpuseg.jobs import registry
from gpuseg.runtime.errors import GpusegError
from gpuseg.runtime.logging_setup import quiet_console

log = logging.getLogger("gpuseg")

#: Hydra flags that do not run the job with the overrides as given: checking is left to Hydra
_UNCHECKED_FLAGS = ("help", "hydra_help", "shell_completion", "config_path", "config_name", "config_dir",
                    "experimental_rerun", "info")
_NOT_OVERRIDABLE = re.compile(r"^Could not override '([^']+)'\.\nTo append to your config use ")
_NOT_DELETABLE = re.compile(r"^Could not delete from config\. '([^']+)' does not exist\.")
_SHOWN_KEYS = 8


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


def _quote_all(names) -> str:
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _listing(names: list[str]) -> str:
    more = len(names) - _SHOWN_KEYS
    return ", ".join(names[:_SHOWN_KEYS]) + (f", ... ({more} more)" if more > 0 else "")


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        keys.extend(_dotted_keys(value, f"{full}."))
    return keys


def unknown_key_message(key: str, cfg: dict) -> str | None:
    """Why ``key`` names nothing in the plain composed config ``cfg``, with the closest keys.

    Returns None when ``key`` does exist.
    """
    parts = key.split(".")
    node: Any = cfg
    depth = 0
    while depth < len(parts):
        if isinstance(node, dict) and parts[depth] in node:
            node = node[parts[depth]]
        elif isinstance(node, list) and parts[depth].isdigit() and int(parts[depth]) < len(node):
            node = node[int(parts[depth])]
        else:
            break
        depth += 1
    if depth == len(parts):
        return None
    parent = ".".join(parts[:depth])
    if not isinstance(node, dict):
        return f"unknown key {key!r}: {parent!r} holds a value, not keys"
    name, rest = parts[depth], parts[depth + 1:]
    siblings = [str(k) for k in node]
    close = difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {_quote_all('.'.join([*parts[:depth], c, *rest]) for c in close)}?"
    # the right name in the wrong place: `n_clusters=5` for `segment.n_clusters=5`
    leaves: dict[str, list[str]] = {}
    for full in _dotted_keys(cfg):
        if not full.startswith("hydra.") or key.startswith("hydra."):
            leaves.setdefault(full.rsplit(".", 1)[-1], []).append(full)
    same = [parts[-1]] if parts[-1] in leaves else difflib.get_close_matches(parts[-1], list(leaves), n=3, cutoff=0.8)
    elsewhere = [full for leaf in same for full in leaves[leaf] if full != key][:3]
    if elsewhere:
        return f"unknown key {key!r}; did you mean {_quote_all(elsewhere)}?"
    if depth == 0:
        where, siblings = "top-level keys", [k for k in siblings if k != "hydra"]
    else:
        where = f"keys of {parent!r}"
    return (f"unknown key {key!r}; {where}: {_listing(siblings)}\n"
            f"  (to add a new key on purpose, prefix it with '+': +{key}=...)")


def unknown_option_message(group: str, option: str, options: list[str]) -> str:
    """Why ``group=option`` names no config of the group, with the closest options."""
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    hint = f"; did you mean {_quote_all(close)}?" if close else ""
    return f"unknown option {option!r} for {group!r}{hint} (options of {group!r}: {', '.join(options)})"


def _hydra_args(argv: list[str]):
    """Hydra's own reading of the command line (flags and overrides), or None when it fails."""
    try:
        from hydra._internal.utils import get_args_parser

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return get_args_parser().parse_args(argv)
    except (Exception, SystemExit):  # Hydra will say what is wrong with the flags
        return None


def _as_run(parsed, multirun: bool) -> list[str] | None:
    """The overrides of one run (a multirun's first job), or None when that cannot be told."""
    lines = []
    for override in parsed:
        if override.is_sweep_override() and multirun:
            if not override.is_discrete_sweep() or override.value_type.name == "GLOB_CHOICE_SWEEP":
                return None
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                return None
            lines.append(f"{override.get_key_element()}={first}")
        else:
            lines.append(override.input_line)
    return lines


def check_overrides(job: str, argv: list[str]) -> tuple[list[str], dict | None]:
    """Compose ``job``'s config with the command line's overrides before Hydra runs it.

    Returns ``(errors, cfg)``: messages for overrides that name no key of the config or no
    option of a config group (each with the closest names), and the composed config as a plain
    dict (None when not composed). Anything this check cannot judge (``--help``, other config
    names, non-enumerable sweeps, ``HYDRA_FULL_ERROR=1``) is left to Hydra: then it returns
    ``([], None)``.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return [], None
    args = _hydra_args(argv)
    if args is None or any(getattr(args, flag, None) for flag in _UNCHECKED_FLAGS):
        return [], None
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf import OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as exc:
        return [f"cannot read the override {exc.override!r}: {exc.message}"], None
    lines = _as_run(parsed, bool(args.multirun))
    if lines is None:
        return [], None
    active = list(zip(lines, parsed, strict=True))
    unknown: list[str] = []
    errors: list[str] = []
    cfg = None
    try:
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3", job_name=job):
            for _ in range(len(active) + 1):
                try:
                    cfg = compose(config_name=job, overrides=[line for line, _ in active], return_hydra_config=True)
                    break
                except MissingConfigException as exc:
                    group, _, option = (exc.missing_cfg_file or "").rpartition("/")
                    named = any(o.key_or_group == group for _, o in active)
                    message = (unknown_option_message(group, option, list(exc.options))
                               if group and exc.options and named else str(exc).split("\nConfig search path")[0])
                    errors.append(message)
                    break
                except ConfigCompositionException as exc:
                    text = str(exc)
                    match = _NOT_OVERRIDABLE.match(text) or _NOT_DELETABLE.match(text)
                    at = [i for i, (_, o) in enumerate(active)
                          if match and o.package is None and o.key_or_group == match.group(1)]
                    if not at:
                        errors.append(text.strip())
                        break
                    unknown.append(match.group(1))
                    del active[at[0]]
            if cfg is not None:
                # a multirun's other jobs: every option swept over must exist in its group
                choices = cfg.hydra.runtime.choices
                loader = GlobalHydra.instance().config_loader()
                for override in parsed:
                    if (args.multirun and override.is_discrete_sweep() and override.package is None
                            and override.key_or_group in choices):
                        options = loader.get_group_options(override.key_or_group)
                        errors.extend(unknown_option_message(override.key_or_group, option, options)
                                      for option in override.sweep_string_iterator() if option not in options)
            reference = cfg if cfg is not None else (compose(config_name=job, return_hydra_config=True)
                                                     if unknown else None)
    except Exception:  # e.g. a sweep value re-written badly: what this check cannot judge, Hydra will
        return [], None
    plain = OmegaConf.to_container(reference, resolve=False) if reference is not None else {}
    errors = [unknown_key_message(key, plain) or f"cannot change or delete {key!r} (its value is null)"
              for key in unknown] + errors
    return errors, (OmegaConf.to_container(cfg, resolve=False) if cfg is not None and not errors else None)


#: what the machine says when a path cannot be used: a read-only or foreign folder, a file where a folder goes
_FILE_ERRORS = (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _work_dir_problem(cfg: dict | None) -> str | None:
    """Why ``paths.work_dir`` cannot hold the run (Hydra writes its log folder there first)."""
    work = ((cfg or {}).get("paths") or {}).get("work_dir")
    if not isinstance(work, str):
        return None
    path = Path(work)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return f"paths.work_dir '{work}' cannot be created: '{existing}' is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"paths.work_dir '{work}': '{existing}' is not writable by this user; choose a folder you can write to"
    return None


def _file_error(exc: OSError) -> str:
    return (f"cannot use '{exc.filename}': {exc.strerror}; check paths.work_dir and paths.data_dir "
            "(a folder gpuseg can write to)")


def _rank_log_overrides(overrides: list[str]) -> list[str]:
    """Under torchrun, ranks other than 0 log to ``<job>.rank<r>.log`` beside rank 0's ``<job>.log``.

    Every rank composes the same run folder; without this they would append to one log file, the
    lines interleaved, and each write the same ``.hydra`` config (rank 0's copy is the record).
    A user's own setting of either key is left as it is.
    """
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if "WORLD_SIZE" not in os.environ and "SLURM_JOB_ID" in os.environ:  # a Slurm task, its variables set later
        rank, world = os.environ.get("SLURM_PROCID", "0"), os.environ.get("SLURM_STEP_NUM_TASKS", "1")
    if not (rank.isdigit() and world.isdigit()) or int(world) <= 1 or int(rank) == 0:
        return []
    keys = {line.split("=", 1)[0].lstrip("+~") for line in overrides}
    extra = []
    if "hydra.job_logging.handlers.file.filename" not in keys:
        extra.append(f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/"
                     f"${{hydra.job.name}}.rank{int(rank)}.log")
    if "hydra.output_subdir" not in keys:
        extra.append("hydra.output_subdir=null")
    return extra


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

    errors, cfg = check_overrides(job, overrides)
    if errors:
        for message in errors:
            print(f"gpuseg {job}: error: {message}", file=sys.stderr)
        return 2
    problem = _work_dir_problem(cfg)
    if problem:
        print(f"gpuseg {job}: error: {problem}", file=sys.stderr)
        return 2
    progress = cfg.get("progress") if cfg else None
    quiet_console(progress if isinstance(progress, bool) else None)

    import hydra
    from omegaconf import DictConfig

    module = registry.load(job)
    outcome: dict = {}

    def task(cfg: DictConfig) -> None:
        quiet_console(bool(cfg.get("progress", True)))  # again, now that Hydra has set up logging
        try:
            from gpuseg.runtime.distributed import export_slurm_environment

            export_slurm_environment()  # a Slurm task started without torchrun (srun, submitit)
            outcome["result"] = module.run(cfg)
        except GpusegError as exc:
            # a user's mistake: a message on stderr (and in the run's log file), never a traceback
            _log_to_files(f"gpuseg {job}: error: {exc}")
            print(f"gpuseg {job}: error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except _FILE_ERRORS as exc:
            _log_to_files(f"gpuseg {job}: error: {_file_error(exc)}")
            print(f"gpuseg {job}: error: {_file_error(exc)}", file=sys.stderr)
            raise SystemExit(2) from None
        _report(job, outcome["result"])

    task.__name__ = job
    app = hydra.main(version_base="1.3", config_path="conf", config_name=job)(task)
    saved = sys.argv
    sys.argv = [f"gpuseg {job}", *overrides, *_rank_log_overrides(overrides)]
    try:
        app()
    except _FILE_ERRORS as exc:  # Hydra creates the run's log folder before the job starts
        print(f"gpuseg {job}: error: {_file_error(exc)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
