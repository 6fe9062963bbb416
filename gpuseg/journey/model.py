"""The journey network (per-field embeddings -> multi-layer LSTM -> heads) and its estimator."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gpuseg.journey.baselines import MarkovBaseline, step_pairs
from gpuseg.journey.sequences import GAP, Sequences
from gpuseg.journey.train import (
    TrainSettings,
    autocast,
    fingerprint,
    fit_network,
    iter_rows,
    make_batch,
)
from gpuseg.runtime.artifacts import load_artifact, save_artifact
from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.progress import progress_bar
from gpuseg.runtime.validation import (
    check_fitted,
    check_int,
    check_options,
    check_param,
    check_real,
    is_int,
)


class JourneyNet(nn.Module):
    """LSTM over event steps with next-event, next-gap, transition-mix and optional label heads.

    Parameters
    ----------
    vocab_sizes : sequence of int
        Codes per categorical field (code 0 is padding); field 0 is the event type.
    embed_dims : sequence of int
        Embedding width per categorical field.
    n_continuous : int
        Continuous values per step; they are standardised with the ``cont_mean`` / ``cont_std``
        buffers (set from the training data before fitting, saved with the weights).
    hidden_size, num_layers, dropout : int, int, float
        LSTM size; dropout applies between LSTM layers and to the customer vector's input.
    out_dim : int
        Size of the customer vector (projection of the last hidden state and the masked mean of
        the step outputs).
    gap_index : int
        Which continuous value is the time gap predicted for the next step.
    aux : bool
        Add a binary label head on the customer vector.
    """

    def __init__(self, vocab_sizes: Sequence[int], embed_dims: Sequence[int], n_continuous: int, *,
                 hidden_size: int = 128, num_layers: int = 2, out_dim: int = 64, dropout: float = 0.1,
                 gap_index: int = 1, aux: bool = False):
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(int(v), int(d), padding_idx=0) for v, d in zip(vocab_sizes, embed_dims, strict=True))
        self.register_buffer("cont_mean", torch.zeros(n_continuous))
        self.register_buffer("cont_std", torch.ones(n_continuous))
        width = sum(int(d) for d in embed_dims) + n_continuous
        self.lstm = nn.LSTM(width, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.next_type = nn.Linear(hidden_size, int(vocab_sizes[0]))
        # a transition table added to the next-type logits: the first-order Markov chain is then
        # one table away (zero at the start, learned quickly), and the LSTM only has to learn
        # what the longer history, the gaps and the amounts add to it
        self.bigram = nn.Embedding(int(vocab_sizes[0]), int(vocab_sizes[0]))
        nn.init.zeros_(self.bigram.weight)
        # the Markov chain the head started from, and the share of the network in the final
        # next-event distribution (1 - share goes to the chain); both saved with the weights, the
        # share tuned on validation customers after training (JourneyEncoder.fit)
        self.register_buffer("markov_proba", torch.zeros(int(vocab_sizes[0]), int(vocab_sizes[0])))
        self.register_buffer("network_share", torch.ones(()))
        self.next_gap = nn.Linear(hidden_size, 1)
        self.project = nn.Linear(2 * hidden_size, out_dim)
        # sequence-level self-supervision: the customer vector predicts the sequence's own
        # distribution of event-type transitions, so order (not only mix) shapes the embedding
        self.transitions = nn.Linear(out_dim, int(vocab_sizes[0]) ** 2)
        self.aux = nn.Linear(out_dim, 1) if aux else None
        self.gap_index = gap_index

    def start_from_markov(self, log_proba: torch.Tensor) -> None:
        """Start the next-type head at a Markov chain: the table holds its log-probabilities and
        the LSTM's share of the logits is zero, so training begins from the baseline's
        predictions and learns only what the history adds (a short CPU run then never starts
        below the baseline it is measured against)."""
        with torch.no_grad():
            self.bigram.weight.copy_(log_proba.to(self.bigram.weight))
            self.markov_proba.copy_(log_proba.exp().to(self.markov_proba))
            nn.init.zeros_(self.next_type.weight)
            nn.init.zeros_(self.next_type.bias)

    def normalise(self, continuous: torch.Tensor) -> torch.Tensor:
        """Standardised continuous values (padding steps are masked by the caller)."""
        return (continuous - self.cont_mean) / self.cont_std

    def forward(self, categorical: torch.Tensor, continuous: torch.Tensor, lengths: torch.Tensor,
                *, heads: bool = True) -> dict[str, torch.Tensor]:
        """Run a batch of left-aligned sequences.

        Parameters
        ----------
        categorical : LongTensor, shape (B, T, F)
        continuous : FloatTensor, shape (B, T, C)
        lengths : LongTensor, shape (B,)
            Steps per sequence, all >= 1 and <= T.
        heads : bool
            Also compute the per-step prediction heads (training); False returns only the
            customer vector (and the auxiliary logit when there is a head).

        Returns
        -------
        dict
            ``vector`` (B, out_dim); with ``heads``: ``type_logits`` (B, T, V), ``gap`` (B, T) and
            ``transition_logits`` (B, V * V);
            ``aux_logit`` (B,) when the network has an auxiliary head.
        """
        T = categorical.shape[1]
        parts = [emb(categorical[..., i]) for i, emb in enumerate(self.embeddings)]
        parts.append(self.normalise(continuous).to(parts[0].dtype))
        x = torch.cat(parts, dim=-1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        mask = (torch.arange(T, device=out.device)[None, :] < lengths.to(out.device)[:, None])
        mean = (out * mask[..., None].to(out.dtype)).sum(1) / lengths.to(out.device)[:, None].to(out.dtype)
        vector = self.project(self.dropout(torch.cat([h[-1].to(out.dtype), mean], dim=-1)))
        result = {"vector": vector}
        if heads:
            result["type_logits"] = self.next_type(out) + self.bigram(categorical[..., 0]).to(out.dtype)
            result["gap"] = self.next_gap(out).squeeze(-1)
            result["transition_logits"] = self.transitions(vector)
        if self.aux is not None:
            result["aux_logit"] = self.aux(vector).squeeze(-1)
        return result


# ------------------------------------------------------------------------------------ estimator

# 2: the next-type head has a transition table (``bigram.weight``)
# 3: the Markov chain and the network's share of the next-event distribution are saved
#    (``markov_proba``, ``network_share``); older files are refused with a message to re-run
#    `gpuseg journeys`
_FORMAT_VERSION = 3
#: network shares tried when the next-event distribution is interpolated with the Markov chain
NETWORK_SHARES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
_KIND = "gpuseg.JourneyEncoder"
_NAME = "JourneyEncoder"
_DEFAULT_EMBED = {"event_type": 16}
_OTHER_EMBED = 8


class JourneyEncoder:
    """Self-supervised LSTM encoder of customer event sequences (scikit-learn style).

    Trained to predict the next event type and the next time gap at every step (plus, when
    labels are given, a binary label from the customer vector); :meth:`transform` returns the
    customer vector: the last hidden state and the masked mean of the LSTM outputs, projected
    to ``out_dim``.

    Parameters
    ----------
    embed_dims : dict of str -> int or int, optional
        Embedding width per categorical field (``default`` key for the others); an int applies
        to every field. Default: 16 for event_type, 8 for the others.
    hidden_size : int, default 128
        LSTM width (256 is a good choice on a GPU).
    num_layers : int, default 2
    out_dim : int, default 64
        Size of the customer vector.
    dropout : float, default 0.1
    batch_size : int, default 256
        Training sequences per step (batches group sequences of similar length).
    epochs : int, default 8
        Maximum epochs.
    lr, weight_decay : float
        AdamW settings; the learning rate decays on a cosine to 5% over ``epochs``.
    patience : int, default 2
        Stop after this many epochs without a lower validation loss (best weights are kept).
    val_fraction : float, default 0.1
        Share of the training customers held out for early stopping when no validation rows
        are given.
    grad_clip : float, default 1.0
        Maximum gradient norm (0 disables clipping).
    aux_weight, gap_weight, mix_weight : float
        Weights in the objective of the label head's BCE, of the next-gap squared error, and of
        the transition-mix cross-entropy (the customer vector predicts its sequence's
        distribution of consecutive event-type pairs; this is what makes journeys that differ
        only in order land apart).
    precision : {"auto", "bf16", "fp32"}
        ``auto`` and ``bf16`` use bf16 autocast on CUDA; CPU always runs in fp32.
    device : str or torch.device, default "cpu"
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    encode_batch_size : int, default 4096
        Sequences per inference batch.
    num_threads : int, optional
        torch CPU threads while fitting and encoding (restored afterwards). A small LSTM gains
        little from intra-op threads and loses a lot when the cores are busy, so 1 is often
        fastest; None keeps torch's setting.
    markov_init : bool, default True
        Start the next-type head at the smoothed first-order Markov chain of the training
        sequences (its log-probabilities as a learned transition table; the LSTM's part of the
        logits starts at zero). After training, the next-event distribution is interpolated
        with that chain, ``share * network + (1 - share) * markov``, the share picked from
        :data:`NETWORK_SHARES` by next-event log-loss on the validation customers (the classic
        interpolation of a neural model with the n-gram it is compared against: where the
        network's departures from the chain do not generalise, they are damped).
    seed : int, default 0
        Initial weights, validation split, batch order and dropout derive from it.
    checkpoint_dir : path-like, optional
        Write a checkpoint each epoch there and resume from the last complete one.
    progress : bool, default False

    Attributes
    ----------
    net_ : JourneyNet
    history_ : list of dict
        Train/validation loss per epoch.
    best_epoch_ : int
    fields_ : list of str
        Categorical fields of the sequences it was fitted on.
    vocab_sizes_ : list of int
    has_aux_ : bool
        Whether the label head exists.
    train_info_ : dict
        Rows used, resume information, world size.
    """

    def __init__(self, *, embed_dims: Mapping[str, int] | int | None = None, hidden_size: int = 128,
                 num_layers: int = 2, out_dim: int = 64, dropout: float = 0.1, batch_size: int = 256,
                 epochs: int = 8, lr: float = 2e-3, weight_decay: float = 0.01, patience: int = 2,
                 val_fraction: float = 0.1, grad_clip: float = 1.0, aux_weight: float = 0.5,
                 gap_weight: float = 0.5, mix_weight: float = 0.5, precision: str = "auto", device: str | torch.device = "cpu",
                 encode_batch_size: int = 4096, num_threads: int | None = None, markov_init: bool = True, seed: int = 0, checkpoint_dir: str | Path | None = None,
                 progress: bool = False):
        self.embed_dims = embed_dims
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.out_dim = out_dim
        self.dropout = dropout
        self.batch_size = batch_size
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.val_fraction = val_fraction
        self.grad_clip = grad_clip
        self.aux_weight = aux_weight
        self.gap_weight = gap_weight
        self.mix_weight = mix_weight
        self.precision = precision
        self.device = device
        self.encode_batch_size = encode_batch_size
        self.num_threads = num_threads
        self.markov_init = markov_init
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress

    # ----------------------------------------------------------------------------- params
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-able; device and checkpoint_dir as strings)."""
        params = {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                  if name != "self"}
        params["device"] = str(params["device"])
        params["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        return params

    def _validate_params(self) -> None:
        for name in ("hidden_size", "num_layers", "out_dim", "batch_size", "epochs", "patience",
                     "encode_batch_size"):
            check_int(_NAME, name, getattr(self, name), low=1)
        check_int(_NAME, "seed", self.seed, low=0)
        check_int(_NAME, "num_threads", self.num_threads, low=1, allow_none=True)
        check_real(_NAME, "lr", self.lr, low=0.0, closed_low=False)
        for name in ("weight_decay", "grad_clip", "aux_weight", "gap_weight", "mix_weight"):
            check_real(_NAME, name, getattr(self, name), low=0.0)
        for name in ("dropout", "val_fraction"):
            check_real(_NAME, name, getattr(self, name), low=0.0, high=1.0, closed_high=False)
        check_options(_NAME, "precision", self.precision, ("auto", "bf16", "fp32"))
        spec = self.embed_dims
        check_param(_NAME, "embed_dims", spec, spec is None or is_int(spec) or isinstance(spec, Mapping),
                    "an int, a dict of field -> int or None")

    def _embed_dims(self, fields: Sequence[str]) -> list[int]:
        spec = self.embed_dims
        if isinstance(spec, (int, np.integer)):
            dims = [int(spec)] * len(fields)
        else:
            table = {**_DEFAULT_EMBED, **(dict(spec) if spec else {})}
            default = int(table.get("default", _OTHER_EMBED))
            dims = [int(table.get(f, default)) for f in fields]
        for f, d in zip(fields, dims, strict=True):
            check_param(_NAME, "embed_dims", {f: d}, d >= 1, "an int or a dict giving every field a width >= 1")
        return dims

    def _build_net(self, vocab_sizes, fields, n_cont, aux: bool) -> JourneyNet:
        return JourneyNet(vocab_sizes, self._embed_dims(fields), n_cont, hidden_size=int(self.hidden_size),
                          num_layers=int(self.num_layers), out_dim=int(self.out_dim),
                          dropout=float(self.dropout), gap_index=GAP, aux=aux)

    def _settings(self) -> TrainSettings:
        return TrainSettings(batch_size=int(self.batch_size), epochs=int(self.epochs), lr=float(self.lr),
                             weight_decay=float(self.weight_decay), patience=int(self.patience),
                             grad_clip=float(self.grad_clip), aux_weight=float(self.aux_weight),
                             gap_weight=float(self.gap_weight),
                             mix_weight=float(self.mix_weight), seed=int(self.seed),
                             precision=str(self.precision), progress=bool(self.progress))

    # -------------------------------------------------------------------------------- fit
    def fit(self, sequences: Sequences, y: np.ndarray | None = None, *, train_rows: np.ndarray | None = None,
            validation_rows: np.ndarray | None = None,
            callback: Callable[[int, dict[str, Any]], None] | None = None,
            max_epochs_this_run: int | None = None) -> JourneyEncoder:
        """Train on ``sequences`` (resuming from ``checkpoint_dir`` when it holds this training).

        Parameters
        ----------
        sequences : Sequences
        y : array-like of shape (n,), optional
            Binary label per row (0/1, NaN = unknown) for the auxiliary head.
        train_rows, validation_rows : array of int, optional
            Rows used for training and for early stopping. By default every row with events
            trains, except a random ``val_fraction`` of them kept for validation.
        callback : callable, optional
            ``callback(epoch, record)`` after each epoch (and its checkpoint).
        max_epochs_this_run : int, optional
            Stop after this many epochs (resumable later from the checkpoint).

        Returns
        -------
        self
        """
        self._validate_params()
        if not isinstance(sequences, Sequences):
            raise UserInputError(f"JourneyEncoder.fit expects Sequences (from SequenceBuilder), got "
                                 f"{type(sequences).__name__}")
        device = resolve_device(self.device, key="device")
        n = len(sequences)
        has_events = sequences.lengths > 0
        if train_rows is None:
            rows = np.flatnonzero(has_events)
            if validation_rows is None:
                rng = np.random.default_rng(self.seed)
                shuffled = rng.permutation(rows)
                n_val = int(round(len(rows) * float(self.val_fraction)))
                validation_rows, train_rows = np.sort(shuffled[:n_val]), np.sort(shuffled[n_val:])
            else:
                train_rows = np.setdiff1d(rows, validation_rows)
        train_rows = np.asarray(train_rows, dtype=np.int64)
        train_rows = train_rows[sequences.lengths[train_rows] > 0]
        validation_rows = np.asarray(validation_rows if validation_rows is not None else [], dtype=np.int64)
        validation_rows = validation_rows[sequences.lengths[validation_rows] > 0]
        if len(train_rows) == 0:
            raise UserInputError("no training customer has an event before as_of: nothing to learn from",
                                 table="events")
        labels = None
        if y is not None:
            labels = np.asarray(y, dtype=np.float64).reshape(-1)
            if len(labels) != n:
                raise UserInputError(f"y has {len(labels)} labels for {n} sequences")
            known = labels[~np.isnan(labels)]
            if not np.isin(known, (0.0, 1.0)).all():
                raise UserInputError("y must hold binary labels (0/1, NaN for unknown); got values "
                                     f"{sorted(set(known.tolist()))[:5]}")
            if len(known) == 0:
                labels = None
        torch.manual_seed(int(self.seed))
        net = self._build_net(sequences.vocab_sizes, sequences.categorical_names,
                              len(sequences.continuous_names), labels is not None)
        mean, std = _continuous_stats(sequences, train_rows)
        net.cont_mean.copy_(torch.from_numpy(mean))
        net.cont_std.copy_(torch.from_numpy(std))
        if self.markov_init and (sequences.lengths[train_rows] > 1).any():
            markov = MarkovBaseline().fit(sequences.subset(train_rows),
                                          sequences.subset(validation_rows) if len(validation_rows) else None)
            net.start_from_markov(torch.from_numpy(np.log(np.clip(markov.table_proba_, 1e-9, 1.0))).float())
        net.to(device)
        fp = fingerprint(
            {k: v for k, v in self.get_params().items() if k not in ("checkpoint_dir", "progress", "device")},
            sequences.vocab_sizes, sequences.categorical_names, train_rows, validation_rows,
            sequences.lengths, sequences.categorical.sum(axis=(0, 1), dtype=np.int64),
            float(np.float64(sequences.continuous.sum(dtype=np.float64))), labels if labels is not None else "none",
            str(device.type),
        )
        with _threads(self.num_threads):
            info = fit_network(net, sequences, labels, train_rows, validation_rows, self._settings(), device,
                               checkpoint_dir=self.checkpoint_dir, run_fingerprint=fp, callback=callback,
                               max_epochs_this_run=max_epochs_this_run)
        self.net_ = net.eval()
        self.device_ = device
        self.fields_ = list(sequences.categorical_names)
        self.continuous_ = list(sequences.continuous_names)
        self.vocab_sizes_ = list(sequences.vocab_sizes)
        self.has_aux_ = labels is not None
        self.history_ = info["history"]
        self.best_epoch_ = info["best_epoch"]
        if self.markov_init and net.markov_proba.sum() > 0:
            self._tune_network_share(sequences.subset(validation_rows))
        self.train_info_ = {"n_train": int(len(train_rows)), "n_validation": int(len(validation_rows)),
                            "network_share": self.network_share_,
                            **{k: v for k, v in info.items() if k != "history"}}
        return self

    @property
    def network_share_(self) -> float:
        """The network's share of the next-event distribution (the rest is the Markov chain)."""
        self._check_fitted()
        return float(self.net_.network_share)

    def _tune_network_share(self, validation: Sequences) -> None:
        """Pick the share of :data:`NETWORK_SHARES` with the lowest validation next-event log-loss
        (1, the network alone, when no validation customer has a next event)."""
        self.net_.network_share.fill_(1.0)
        if not (validation.lengths > 1).any():
            return
        proba, actual = self.predict_proba_next(validation)
        markov = self.net_.markov_proba.cpu().numpy()[step_pairs(validation)[0]]
        idx = np.arange(len(actual))

        def loss(share: float) -> float:
            p = share * proba[idx, actual] + (1.0 - share) * markov[idx, actual]
            return float(-np.mean(np.log(np.clip(p.astype(np.float64), 1e-12, 1.0))))

        self.net_.network_share.fill_(min(NETWORK_SHARES, key=lambda share: (loss(share), -share)))

    def _check_fitted(self) -> None:
        check_fitted(_NAME, hasattr(self, "net_"))

    def _check_sequences(self, sequences: Sequences) -> None:
        if list(sequences.categorical_names) != self.fields_ or list(sequences.vocab_sizes) != self.vocab_sizes_:
            raise UserInputError(
                f"sequences have fields {sequences.categorical_names} with vocabularies {sequences.vocab_sizes}; "
                f"the encoder was fitted on {self.fields_} with {self.vocab_sizes_}: build them with the "
                "SequenceBuilder saved with the encoder")

    # -------------------------------------------------------------------------- inference
    def _run(self, sequences: Sequences, fn, *, heads: bool, desc: str) -> None:
        self._check_fitted()
        self._check_sequences(sequences)
        rows = np.flatnonzero(sequences.lengths > 0)
        net = self.net_.eval()
        bar = progress_bar(self.progress, total=len(rows), desc=desc, unit="seq")
        with _threads(self.num_threads), torch.inference_mode(), autocast(self.device_, self.precision):
            for batch_rows in iter_rows(rows, sequences.lengths, int(self.encode_batch_size)):
                batch = make_batch(sequences, batch_rows, None, self.device_)
                fn(batch_rows, batch, net(batch["categorical"], batch["continuous"], batch["lengths"],
                                          heads=heads))
                bar.update(len(batch_rows))
        bar.close()

    def transform(self, sequences: Sequences) -> np.ndarray:
        """Customer vectors, shape (n, out_dim) float32; zeros for customers without events."""
        out = np.zeros((len(sequences), int(self.out_dim)), dtype=np.float32)

        def keep(rows, batch, result):
            out[rows] = result["vector"].float().cpu().numpy()

        self._run(sequences, keep, heads=False, desc="journeys encode")
        return out

    def predict_proba(self, sequences: Sequences) -> np.ndarray:
        """Label probability of the auxiliary head per row (NaN for customers without events)."""
        self._check_fitted()
        if not self.has_aux_:
            raise UserInputError("this JourneyEncoder has no label head: fit it with y")
        out = np.full(len(sequences), np.nan)

        def keep(rows, batch, result):
            out[rows] = torch.sigmoid(result["aux_logit"].float()).cpu().numpy()

        self._run(sequences, keep, heads=False, desc="journeys label")
        return out

    def predict_proba_next(self, sequences: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Next event-type probabilities and true next codes at every step that has a next step.

        Returns
        -------
        proba : ndarray of float32, shape (n_steps, n_types)
        actual : ndarray of int64, shape (n_steps,)
            Flat over customers (in row order) and steps (step t predicts the event at t + 1):
            the order of :func:`gpuseg.journey.baselines.step_pairs`, so the baselines' scores
            line up entry by entry.
        """
        steps = np.maximum(sequences.lengths - 1, 0)
        offsets = np.concatenate([[0], np.cumsum(steps)])
        n_types = int(sequences.vocab_sizes[0])
        proba = np.zeros((int(offsets[-1]), n_types), dtype=np.float32)
        actual = np.zeros(int(offsets[-1]), dtype=np.int64)

        def keep(rows, batch, result):
            cat, lengths = batch["categorical"], batch["lengths"].to(batch["categorical"].device)
            T = cat.shape[1]
            valid = torch.arange(T - 1, device=cat.device)[None, :] < (lengths - 1)[:, None]
            p = torch.softmax(result["type_logits"][:, :-1].float(), dim=-1)[valid]
            share = float(self.net_.network_share)
            if share < 1.0:
                p = share * p + (1.0 - share) * self.net_.markov_proba[cat[:, :-1, 0][valid]]
            p = p.cpu().numpy()
            # flat position of each (row, step) in row-major order over the whole input
            where = (offsets[rows][:, None] + np.arange(T - 1)[None, :])[valid.cpu().numpy()]
            proba[where] = p
            actual[where] = cat[:, 1:, 0][valid].cpu().numpy()

        self._run(sequences, keep, heads=True, desc="journeys next")
        return proba, actual

    def predict_next(self, sequences: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (most probable) and true next event-type codes at every step with a next step.

        Returns
        -------
        predicted, actual : ndarray of int64
            In the order of :meth:`predict_proba_next`.
        """
        proba, actual = self.predict_proba_next(sequences)
        return proba.argmax(axis=1).astype(np.int64), actual

    # ------------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (settings, fields, stats).

        ``extra`` (e.g. the fitted SequenceBuilder's ``to_dict()`` under ``sequences``) is stored
        in the JSON so that one pair of files is enough to encode new data.
        """
        self._check_fitted()
        meta = {
            "params": self.get_params(),
            "fields": self.fields_,
            "continuous": self.continuous_,
            "vocab_sizes": self.vocab_sizes_,
            "embed_dims": self._embed_dims(self.fields_),
            "has_aux": self.has_aux_,
            "continuous_mean": self.net_.cont_mean.cpu().tolist(),
            "continuous_std": self.net_.cont_std.cpu().tolist(),
            "best_epoch": self.best_epoch_,
            "history": self.history_,
            **(dict(extra) if extra else {}),
        }
        return save_artifact(path, self.net_.state_dict(), meta, kind=_KIND, version=_FORMAT_VERSION).tensors

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> JourneyEncoder:
        """Read an encoder written by :meth:`save` (``extra`` entries land in ``metadata_``)."""
        built: dict[str, Any] = {}

        def weight_shapes(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
            # the network the metadata describes: its weights are what the tensor file must hold
            params = dict(meta["params"])
            if device is not None:
                params["device"] = str(device)
            built["enc"] = enc = cls(**params)
            built["net"] = net = enc._build_net(meta["vocab_sizes"], meta["fields"], len(meta["continuous"]),
                                                meta["has_aux"])
            return {k: tuple(v.shape) for k, v in net.state_dict().items()}

        art = load_artifact(path, kind=_KIND, version=_FORMAT_VERSION, expected_shapes=weight_shapes,
                            what="journey encoder", remedy="run `gpuseg journeys` (again) to write it",
                            config_key="paths.work_dir")
        meta, enc, net = art.meta, built["enc"], built["net"]
        enc.device_ = resolve_device(enc.device, key="device")
        net.load_state_dict(art.tensors)
        enc.net_ = net.to(enc.device_).eval()
        enc.fields_, enc.continuous_ = list(meta["fields"]), list(meta["continuous"])
        enc.vocab_sizes_, enc.has_aux_ = list(meta["vocab_sizes"]), bool(meta["has_aux"])
        enc.history_, enc.best_epoch_ = meta.get("history", []), meta.get("best_epoch")
        enc.train_info_ = {}
        enc.metadata_ = {k: v for k, v in meta.items() if k not in ("params", "history")}
        return enc


@contextlib.contextmanager
def _threads(n: int | None):
    """Use ``n`` torch CPU threads inside the block (no change when None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _continuous_stats(seqs: Sequences, rows: np.ndarray, max_rows: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each continuous value over the real steps of (up to ``max_rows``) rows."""
    rows = rows[:max_rows]
    cont = seqs.continuous[rows]
    mask = np.arange(seqs.max_len)[None, :] < seqs.lengths[rows][:, None]
    values = cont[mask].astype(np.float64)
    if len(values) == 0:
        return np.zeros(cont.shape[-1], np.float32), np.ones(cont.shape[-1], np.float32)
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
