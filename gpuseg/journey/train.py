"""Training loop of the journey network: bucketed batches, AMP, early stopping, checkpoints, DDP.

Determinism: the batch order of epoch ``e`` and the dropout stream are derived from
``(seed, e)`` alone, so a run resumed from the checkpoint of epoch ``e`` continues exactly like
an uninterrupted run (bit-identical on CPU). Checkpoints hold tensors in safetensors and the
rest (counters, hyperparameters, Python/numpy RNG state) in a JSON sidecar; the JSON is written
last, so a checkpoint without its JSON is incomplete and ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from gpuseg.journey.sequences import Sequences
from gpuseg.runtime.distributed import all_reduce_values, barrier_all, rank_and_world
from gpuseg.runtime.io import atomic_path, read_json, write_json
from gpuseg.runtime.progress import progress_bar

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
_CKPT = re.compile(r"^epoch_(\d{4,})\.json$")


@dataclass
class TrainSettings:
    """Hyperparameters of :func:`fit_network` (see ``JourneyEncoder`` for their meaning)."""

    batch_size: int = 256
    epochs: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    patience: int = 2
    grad_clip: float = 1.0
    aux_weight: float = 0.5
    gap_weight: float = 0.5
    mix_weight: float = 0.5
    seed: int = 0
    precision: str = "auto"
    progress: bool = False


# ------------------------------------------------------------------------------------- batches


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of row indices with similar lengths, in random order.

    Rows are sorted by length (random tie-break), cut into batches of ``batch_size`` and the
    batches shuffled, so each batch pads little and the epoch still visits lengths in random order.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = np.lexsort((rng.random(n), lengths))
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def make_batch(seqs: Sequences, rows: np.ndarray, labels: np.ndarray | None,
               device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors of the sequences ``rows``, cut to their longest length, on ``device``."""
    lengths = seqs.lengths[rows]
    T = max(int(lengths.max()), 1)
    non_blocking = device.type == "cuda"
    batch = {
        "categorical": torch.from_numpy(np.ascontiguousarray(seqs.categorical[rows, :T])).to(
            device, non_blocking=non_blocking).long(),
        "continuous": torch.from_numpy(np.ascontiguousarray(seqs.continuous[rows, :T])).to(
            device, non_blocking=non_blocking),
        "lengths": torch.from_numpy(lengths.astype(np.int64)),
    }
    if labels is not None:
        batch["labels"] = torch.from_numpy(labels[rows].astype(np.float32)).to(device)
    return batch


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when ``precision`` is ``auto`` or ``bf16``; fp32 otherwise."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_losses(net: nn.Module, batch: dict[str, torch.Tensor], gap_index: int) -> dict[str, torch.Tensor]:
    """Summed losses with their counts: next-type cross-entropy and next-gap squared error per
    step, transition-mix cross-entropy per sequence, label BCE per labelled customer."""
    cat, cont, lengths = batch["categorical"], batch["continuous"], batch["lengths"]
    out = net(cat, cont, lengths)
    T = cat.shape[1]
    dev_lengths = lengths.to(cat.device)
    valid = torch.arange(T - 1, device=cat.device)[None, :] < (dev_lengths - 1)[:, None]
    logits = out["type_logits"][:, :-1][valid].float()
    target = cat[:, 1:, 0][valid]
    ce = F.cross_entropy(logits, target, reduction="sum")
    module = net.module if hasattr(net, "module") else net
    gap_target = module.normalise(cont)[:, 1:, gap_index][valid]
    se = ((out["gap"][:, :-1][valid].float() - gap_target) ** 2).sum()
    # empirical distribution of (type_t, type_t+1) pairs of each sequence
    V = out["transition_logits"].shape[-1]
    v = int(round(V ** 0.5))
    pairs = cat[:, :-1, 0] * v + cat[:, 1:, 0]
    counts = torch.zeros(cat.shape[0], V, device=cat.device)
    counts.scatter_add_(1, pairs.clamp(max=V - 1), valid.float())
    n_pairs = counts.sum(1, keepdim=True)
    has_pairs = n_pairs.squeeze(1) > 0
    log_p = F.log_softmax(out["transition_logits"].float(), dim=-1)
    mix = -(counts[has_pairs] / n_pairs[has_pairs] * log_p[has_pairs]).sum()
    result = {"ce": ce, "se": se, "steps": valid.sum(), "mix": mix, "sequences": has_pairs.sum()}
    if "aux_logit" in out and "labels" in batch:
        labels = batch["labels"]
        known = ~torch.isnan(labels)
        result["bce"] = F.binary_cross_entropy_with_logits(
            out["aux_logit"][known].float(), labels[known], reduction="sum")
        result["labelled"] = known.sum()
    return result


def combine(parts: dict[str, torch.Tensor], settings: TrainSettings) -> torch.Tensor:
    """The training objective from summed parts: per-step mean + weighted per-customer BCE."""
    steps = parts["steps"].clamp(min=1)
    loss = (parts["ce"] + settings.gap_weight * parts["se"]) / steps
    loss = loss + settings.mix_weight * parts["mix"] / parts["sequences"].clamp(min=1)
    if "bce" in parts:
        loss = loss + settings.aux_weight * parts["bce"] / parts["labelled"].clamp(min=1)
    return loss


# --------------------------------------------------------------------------------- distributed


# --------------------------------------------------------------------------------- checkpoints


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(folder: Path, epoch: int, *, net: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, best_state: dict[str, torch.Tensor], meta: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write ``epoch_NNNN.safetensors`` then its JSON sidecar (atomically); prune older ones."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in net.state_dict().items():
        tensors[f"model.{name}"] = t.detach().cpu().contiguous().clone()
    for name, t in best_state.items():
        tensors[f"best.{name}"] = t.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
    for pid, state in opt["state"].items():
        plain = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain[key] = value
        opt_meta["state"][str(pid)] = {"tensors": sorted(k for k, v in state.items() if torch.is_tensor(v)),
                                       "plain": plain}
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    stem = folder / f"epoch_{epoch:04d}"
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    sidecar = {"version": CHECKPOINT_VERSION, "epoch": epoch, **meta, "optimizer": opt_meta,
               "scheduler": scheduler.state_dict(), "rng": rng_meta}
    write_json(stem.with_suffix(".json"), sidecar)
    for old in list_checkpoints(folder)[:-keep]:
        for suffix in (".json", ".safetensors"):
            (folder / f"epoch_{old:04d}{suffix}").unlink(missing_ok=True)
    return stem.with_suffix(".safetensors")


def list_checkpoints(folder: Path) -> list[int]:
    """Epochs of the complete checkpoints (JSON sidecar and tensors both present), ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    epochs = []
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m and p.with_suffix(".safetensors").exists():
            epochs.append(int(m.group(1)))
    return sorted(epochs)


def load_checkpoint(folder: Path, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON sidecar of one checkpoint."""
    stem = Path(folder) / f"epoch_{epoch:04d}"
    return load_file(str(stem.with_suffix(".safetensors"))), read_json(stem.with_suffix(".json"))


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       meta: dict[str, Any]) -> None:
    state = {}
    for pid, entry in meta["state"].items():
        s = dict(entry["plain"])
        for key in entry["tensors"]:
            s[key] = tensors[f"optimizer.{pid}.{key}"]
        state[int(pid)] = s
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def fingerprint(*parts: Any) -> str:
    """Short hash of settings and data summaries: a checkpoint resumes only the same training."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------------------------- loop


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] % (2**62))


def _iterate(batches: list[np.ndarray], rank: int, world: int) -> list[np.ndarray]:
    """This rank's share of the epoch's batches; every rank gets the same count (wrapping)."""
    if world <= 1:
        return batches
    per_rank = -(-len(batches) // world)
    padded = [batches[i % len(batches)] for i in range(per_rank * world)]
    return padded[rank::world]


def evaluate_loss(net: nn.Module, seqs: Sequences, rows: np.ndarray, labels: np.ndarray | None,
                  settings: TrainSettings, device: torch.device, gap_index: int,
                  rank: int = 0, world: int = 1) -> float:
    """Validation objective over ``rows`` (same weighting as training), all ranks combined."""
    net.eval()
    sums = {"ce": 0.0, "se": 0.0, "steps": 0.0, "mix": 0.0, "sequences": 0.0, "bce": 0.0, "labelled": 0.0}
    batches = [rows[i:i + settings.batch_size * 2] for i in range(0, len(rows), settings.batch_size * 2)]
    batches = batches[rank::world] if world > 1 else batches
    with torch.no_grad(), autocast(device, settings.precision):
        for b in batches:
            parts = batch_losses(net, make_batch(seqs, b, labels, device), gap_index)
            for k, v in parts.items():
                sums[k] += float(v)
    sums = all_reduce_values(sums)
    loss = (sums["ce"] + settings.gap_weight * sums["se"]) / max(sums["steps"], 1.0)
    loss += settings.mix_weight * sums["mix"] / max(sums["sequences"], 1.0)
    if labels is not None and sums["labelled"] > 0:
        loss += settings.aux_weight * sums["bce"] / sums["labelled"]
    return float(loss)


@dataclass
class _Progress:
    """Where a training stands: what a checkpoint stores and a resumed run restores."""

    best_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    best_val: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    epoch: int = 0
    finished: bool = False
    resumed_from: int | None = None


def _resume(folder: Path, module: nn.Module, optimizer, scheduler, run_fingerprint: str, device: torch.device,
            rank: int, state: _Progress) -> _Progress:
    """Continue from the last checkpoint of the same training; clear checkpoints of another one."""
    found = list_checkpoints(folder)
    if found:
        tensors, meta = load_checkpoint(folder, found[-1])
        if meta.get("fingerprint") == run_fingerprint and meta.get("version") == CHECKPOINT_VERSION:
            module.load_state_dict({k: v.to(device) for k, v in _prefixed(tensors, "model.").items()})
            _restore_optimizer(optimizer, tensors, meta["optimizer"])
            scheduler.load_state_dict(meta["scheduler"])
            _set_rng_state(tensors, meta["rng"])
            state = _Progress(best_state={k: v.to(device) for k, v in _prefixed(tensors, "best.").items()},
                              history=list(meta["history"]), best_val=float(meta["best_val_loss"]),
                              best_epoch=int(meta["best_epoch"]), bad_epochs=int(meta["bad_epochs"]),
                              epoch=int(meta["epoch"]), finished=bool(meta.get("finished", False)),
                              resumed_from=int(meta["epoch"]))
            log.info("resuming journey training from the checkpoint of epoch %d%s", state.epoch,
                     " (already finished)" if state.finished else "")
        elif rank == 0:
            log.warning("checkpoints in %s belong to another training (settings or data changed); "
                        "starting afresh", folder)
            for e in found:
                for suffix in (".json", ".safetensors"):
                    (folder / f"epoch_{e:04d}{suffix}").unlink(missing_ok=True)
    barrier_all()
    return state


def _train_epoch(model: nn.Module, module: nn.Module, optimizer, seqs: Sequences, labels, train_rows: np.ndarray,
                 settings: TrainSettings, device: torch.device, gap_index: int, epoch: int, rank: int,
                 world: int) -> float:
    """One pass over this rank's share of the training batches; the mean loss over every rank."""
    rng = np.random.default_rng([settings.seed, epoch])
    torch.manual_seed(_epoch_seed(settings.seed, epoch))  # dropout stream of this epoch
    batches = _iterate(length_buckets(seqs.lengths[train_rows], settings.batch_size, rng), rank, world)
    model.train()
    total, count = 0.0, 0
    bar = progress_bar(settings.progress and rank == 0, total=len(batches),
                       desc=f"journeys epoch {epoch}/{settings.epochs}", unit="batch")
    for local in batches:
        batch = make_batch(seqs, train_rows[local], labels, device)
        with autocast(device, settings.precision):
            loss = combine(batch_losses(model, batch, gap_index), settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip and settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(module.parameters(), settings.grad_clip)
        optimizer.step()
        total += float(loss.detach())
        count += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}")
    bar.close()
    summed = all_reduce_values({"t": total, "n": float(count)})
    return summed["t"] / max(summed["n"], 1.0)


def fit_network(net: nn.Module, seqs: Sequences, labels: np.ndarray | None, train_rows: np.ndarray,
                val_rows: np.ndarray, settings: TrainSettings, device: torch.device, *,
                checkpoint_dir: str | Path | None = None, run_fingerprint: str = "",
                callback: Callable[[int, dict[str, Any]], None] | None = None,
                max_epochs_this_run: int | None = None) -> dict[str, Any]:
    """Train ``net`` in place with AdamW, cosine decay, clipping and early stopping.

    Parameters
    ----------
    net : JourneyNet
        Network on ``device``; its best weights (lowest validation loss) are loaded at the end.
    seqs : Sequences
        All sequences; ``train_rows`` / ``val_rows`` index into them (rows with length >= 1).
    labels : ndarray of float or None
        Binary label per row of ``seqs`` (NaN = unknown) for the auxiliary head.
    settings : TrainSettings
    device : torch.device
    checkpoint_dir : path-like, optional
        Where to write a checkpoint after every epoch and to resume from: a complete checkpoint
        with the same ``run_fingerprint`` is continued; other checkpoints there are removed.
    run_fingerprint : str
        Identifies the training (settings + data); see :func:`fingerprint`.
    callback : callable, optional
        ``callback(epoch, record)`` after each epoch's checkpoint (tests use it to interrupt).
    max_epochs_this_run : int, optional
        Stop (unfinished, resumable) after this many epochs in this call.

    Returns
    -------
    dict
        ``history`` (per-epoch train/val loss, lr), ``best_epoch``, ``best_val_loss``,
        ``epochs_run`` (in this call), ``resumed_from`` (epoch or None), ``finished``.
    """
    rank, world = rank_and_world()
    module = net
    gap_index = int(module.gap_index)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(settings.epochs, 1),
                                                           eta_min=settings.lr * 0.05)
    state = _Progress(best_state={k: v.detach().clone() for k, v in module.state_dict().items()}, history=[])
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        state = _resume(folder, module, optimizer, scheduler, run_fingerprint, device, rank, state)

    if state.epoch == 0 and not state.history and len(val_rows):
        # the starting point (e.g. a head set to the Markov chain) is a candidate too: training
        # that only makes it worse on validation keeps the start
        state.best_val = evaluate_loss(module, seqs, val_rows, labels, settings, device, gap_index, rank, world)
    model: nn.Module = module
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    epochs_run = 0
    while not state.finished and state.epoch < settings.epochs:
        if max_epochs_this_run is not None and epochs_run >= max_epochs_this_run:
            break
        state.epoch += 1
        epoch = state.epoch
        train_loss = _train_epoch(model, module, optimizer, seqs, labels, train_rows, settings, device, gap_index,
                                  epoch, rank, world)
        lr = float(scheduler.get_last_lr()[0])
        scheduler.step()
        val_loss = (evaluate_loss(module, seqs, val_rows, labels, settings, device, gap_index, rank, world)
                    if len(val_rows) else train_loss)
        improved = val_loss < state.best_val - 1e-6
        if improved:
            state.best_val, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
            state.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            state.bad_epochs += 1
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr}
        state.history.append(record)
        log.info("journeys epoch %d: train loss %.4f, validation loss %.4f%s", epoch, train_loss, val_loss,
                 " (best)" if improved else "")
        state.finished = epoch >= settings.epochs or state.bad_epochs >= settings.patience
        epochs_run += 1
        if folder is not None:
            if rank == 0:
                meta = {"fingerprint": run_fingerprint, "settings": asdict(settings), "history": state.history,
                        "best_val_loss": state.best_val, "best_epoch": state.best_epoch,
                        "bad_epochs": state.bad_epochs, "finished": state.finished}
                save_checkpoint(folder, epoch, net=module, optimizer=optimizer, scheduler=scheduler,
                                best_state=state.best_state, meta=meta)
            barrier_all()
        if callback is not None:
            callback(epoch, record)
    if state.finished:
        module.load_state_dict(state.best_state)
    return {"history": state.history, "best_epoch": state.best_epoch, "best_val_loss": state.best_val,
            "epochs_run": epochs_run, "resumed_from": state.resumed_from, "finished": state.finished,
            "world_size": world}


def iter_rows(rows: np.ndarray, lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Inference batches of ``rows`` grouped by length (less padding), in a fixed order."""
    order = rows[np.argsort(lengths[rows], kind="stable")]
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]
