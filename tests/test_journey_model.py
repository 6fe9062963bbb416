"""JourneyEncoder: learning order, determinism, checkpoints and resume (in-process and killed), DDP."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import DEVICES
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from gpuseg.journey import JourneyEncoder, MarkovBaseline, Sequences, UnigramBaseline
from gpuseg.journey.baselines import accuracy, kmeans_labels
from gpuseg.journey.train import list_checkpoints, load_checkpoint
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.logistic import fit_logistic, logistic_proba
from gpuseg.runtime.metrics import adjusted_rand_index, roc_auc

TINY = dict(hidden_size=24, num_layers=2, out_dim=8, embed_dims=6, batch_size=32, epochs=4, lr=0.01,
            patience=5, num_threads=1, seed=0)


def two_direction_sequences(n: int = 360, L: int = 16, seed: int = 0) -> tuple[Sequences, np.ndarray]:
    """Half the customers cycle through 4 event types forwards, half backwards (p = 0.9).

    A first-order chain sees both directions mixed (about 50% from any state); a model that
    reads the history can tell the direction and reach about 90%.
    """
    rng = np.random.default_rng(seed)
    direction = rng.integers(0, 2, n)
    lengths = rng.integers(2, L + 1, n)
    lengths[:6] = 0  # customers without events
    cat = np.zeros((n, L, 2), dtype=np.int16)
    cont = np.zeros((n, L, 3), dtype=np.float32)
    for i in range(n):
        state = rng.integers(0, 4)
        for t in range(lengths[i]):
            cat[i, t, 0] = 3 + state
            cat[i, t, 1] = 3 + rng.integers(0, 3)
            cont[i, t] = rng.normal(size=3)
            step = 1 if direction[i] else -1
            state = (state + (step if rng.random() < 0.9 else rng.integers(0, 4))) % 4
    seqs = Sequences(customer_ids=pa.array([f"c{i}" for i in range(n)]), lengths=lengths.astype(np.int64),
                     n_events=lengths.astype(np.int64), categorical=cat, continuous=cont,
                     categorical_names=["event_type", "category"],
                     continuous_names=["log_amount", "log_gap_hours", "log_hours_to_as_of"],
                     vocab_sizes=[7, 6])
    return seqs, direction


@pytest.fixture(scope="module")
def data():
    return two_direction_sequences()


def _weights(enc: JourneyEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in enc.net_.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("device", DEVICES)
def test_learns_direction_beats_baselines_and_separates_it(data, device):
    seqs, direction = data
    rows = np.arange(len(seqs))
    train, test = rows[rows % 4 != 0], rows[rows % 4 == 0]
    enc = JourneyEncoder(**{**TINY, "epochs": 20, "batch_size": 16, "lr": 0.02}, device=device).fit(seqs, direction.astype(float),
                                                                     train_rows=train[train % 8 != 1],
                                                                     validation_rows=train[train % 8 == 1])
    test_seqs, train_seqs = seqs.subset(test), seqs.subset(train)
    model = accuracy(*enc.predict_next(test_seqs))
    markov = accuracy(*MarkovBaseline().fit(train_seqs).predict_next(test_seqs))
    unigram = accuracy(*UnigramBaseline().fit(train_seqs).predict_next(test_seqs))
    assert unigram < 0.35 and 0.4 < markov < 0.6
    assert model > markov + 0.15
    emb = enc.transform(seqs)
    assert emb.shape == (len(seqs), 8) and emb.dtype == np.float32
    assert not emb[seqs.lengths == 0].any() and np.abs(emb[seqs.lengths > 0]).sum(1).min() > 0
    has = seqs.lengths > 3
    assert adjusted_rand_index(kmeans_labels(emb[has], 2), direction[has]) > 0.6
    proba = enc.predict_proba(test_seqs)
    assert np.isnan(proba[test_seqs.lengths == 0]).all()
    ok = test_seqs.lengths > 0
    assert roc_auc(direction[test][ok], proba[ok]) > 0.85


def test_same_seed_same_weights_and_save_load(data, tmp_path):
    seqs, _ = data
    a = JourneyEncoder(**{**TINY, "epochs": 2}).fit(seqs)
    b = JourneyEncoder(**{**TINY, "epochs": 2}).fit(seqs)
    assert _same(_weights(a), _weights(b))
    c = JourneyEncoder(**{**TINY, "epochs": 2, "seed": 1}).fit(seqs)
    assert not _same(_weights(a), _weights(c))
    a.save(tmp_path / "enc", extra={"note": "x"})
    loaded = JourneyEncoder.load(tmp_path / "enc.safetensors")
    assert np.array_equal(loaded.transform(seqs), a.transform(seqs))
    assert loaded.metadata_["note"] == "x" and loaded.get_params()["hidden_size"] == 24
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_interrupted_training_resumes_to_the_same_result(data, tmp_path):
    seqs, direction = data
    y = direction.astype(float)
    y[::7] = np.nan  # unknown labels are skipped by the head
    params = {**TINY, "epochs": 4, "patience": 10}
    reference = JourneyEncoder(**params).fit(seqs, y)

    class Interrupt(KeyboardInterrupt):
        pass

    def stop_after_two(epoch, record):
        if epoch == 2:
            raise Interrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        JourneyEncoder(**params, checkpoint_dir=ckpt).fit(seqs, y, callback=stop_after_two)
    assert list_checkpoints(ckpt) == [1, 2]
    tensors, meta = load_checkpoint(ckpt, 2)
    assert meta["epoch"] == 2 and not meta["finished"] and len(meta["history"]) == 2
    assert any(k.startswith("optimizer.") for k in tensors) and "rng.torch" in tensors
    assert "scheduler" in meta and len(meta["rng"]["python"][1]) == 625

    resumed = JourneyEncoder(**params, checkpoint_dir=ckpt).fit(seqs, y)
    assert resumed.train_info_["resumed_from"] == 2 and resumed.train_info_["epochs_run"] == 2
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4]
    assert _same(_weights(resumed), _weights(reference))
    assert resumed.history_ == reference.history_
    # a finished training is not redone; other settings do not pick up these checkpoints
    again = JourneyEncoder(**params, checkpoint_dir=ckpt).fit(seqs, y)
    assert again.train_info_["epochs_run"] == 0 and _same(_weights(again), _weights(reference))
    other = JourneyEncoder(**{**params, "lr": 0.02}, checkpoint_dir=ckpt).fit(seqs, y, max_epochs_this_run=1)
    assert other.train_info_["resumed_from"] is None and list_checkpoints(ckpt) == [1]


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_journey_model import TINY, two_direction_sequences
    from gpuseg.journey import JourneyEncoder

    def die(epoch, record):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a lost machine

    seqs, direction = two_direction_sequences()
    JourneyEncoder(**{{**TINY, "epochs": 3}}, checkpoint_dir={ckpt!r}).fit(seqs, direction.astype(float), callback=die)
""")


def test_killed_process_resumes_from_its_last_checkpoint(data, tmp_path):
    seqs, direction = data
    ckpt = tmp_path / "ckpt"
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), ckpt=str(ckpt))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert list_checkpoints(ckpt) == [1, 2]
    resumed = JourneyEncoder(**{**TINY, "epochs": 3}, checkpoint_dir=ckpt).fit(seqs, direction.astype(float))
    assert resumed.train_info_["resumed_from"] == 2 and resumed.train_info_["epochs_run"] == 1
    reference = JourneyEncoder(**{**TINY, "epochs": 3}).fit(seqs, direction.astype(float))
    assert _same(_weights(resumed), _weights(reference))


def test_early_stopping_keeps_the_best_epoch(data):
    seqs, _ = data
    enc = JourneyEncoder(**{**TINY, "epochs": 30, "lr": 0.05, "patience": 1}).fit(seqs)
    losses = [h["val_loss"] for h in enc.history_]
    assert len(losses) < 30  # stopped early
    assert enc.best_epoch_ == int(np.argmin(losses)) + 1 and len(losses) == enc.best_epoch_ + 1


def test_parameter_and_input_errors(data):
    seqs, _ = data
    with pytest.raises(ConfigError, match=r"'hidden_size' parameter of JourneyEncoder must be an int in the range \[1, inf\). Got 0 instead"):
        JourneyEncoder(hidden_size=0).fit(seqs)
    with pytest.raises(ConfigError, match="'precision' parameter"):
        JourneyEncoder(precision="fp8").fit(seqs)
    with pytest.raises(UserInputError, match="binary labels"):
        JourneyEncoder(**TINY).fit(seqs, np.full(len(seqs), 2.0))
    with pytest.raises(UserInputError, match="not fitted yet"):
        JourneyEncoder().transform(seqs)
    enc = JourneyEncoder(**{**TINY, "epochs": 1}).fit(seqs)
    with pytest.raises(UserInputError, match="no label head"):
        enc.predict_proba(seqs)
    other = seqs.subset(np.arange(10))
    other.vocab_sizes = [9, 6]
    with pytest.raises(UserInputError, match="SequenceBuilder saved with the encoder"):
        enc.transform(other)


def test_baselines_and_scores_match_references(data):
    seqs, direction = data
    unigram = UnigramBaseline().fit(seqs)
    markov = MarkovBaseline().fit(seqs)
    pred, actual = markov.predict_next(seqs)
    # the Markov prediction is the most frequent successor of each state
    for state in range(3, 7):
        successors = actual[seqs.categorical[..., 0][:, :-1][
            np.arange(seqs.max_len - 1)[None] < (seqs.lengths - 1)[:, None]] == state]
        assert markov.table_[state] == np.bincount(successors).argmax()
    assert accuracy(pred, actual) >= accuracy(*unigram.predict_next(seqs))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    score = y + rng.normal(0, 1.5, 500)
    score[:40] = np.round(score[:40])  # ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score))
    a, b = rng.integers(0, 4, 300), rng.integers(0, 3, 300)
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))
    X = rng.normal(size=(400, 5)) * [1, 10, 0.1, 1, 1]
    yl = (X[:, 0] + X[:, 1] / 10 + rng.normal(0, 1, 400) > 0).astype(int)
    Z = (X - X.mean(0)) / X.std(0)
    ours = logistic_proba(Z, *fit_logistic(Z, yl))
    ref = LogisticRegression(C=1e3, max_iter=1000).fit(Z, yl).predict_proba(Z)[:, 1]
    assert np.abs(ours - ref).max() < 0.02
    # string labels and tensors score alike
    assert adjusted_rand_index(a.astype(str), torch.as_tensor(b)) == pytest.approx(adjusted_rand_score(a, b))


def _ddp_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        seqs, direction = two_direction_sequences(n=200)
        enc = JourneyEncoder(**{**TINY, "epochs": 2}, checkpoint_dir=os.path.join(out_dir, "ckpt"))
        enc.fit(seqs, direction.astype(float))
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), enc.transform(seqs))
        with open(os.path.join(out_dir, f"world{rank}.txt"), "w") as fh:
            fh.write(str(enc.train_info_["world_size"]))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_train_one_shared_model(tmp_path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert (tmp_path / "world0.txt").read_text() == "2"
    assert np.array_equal(a, b) and np.abs(a).sum() > 0  # gradients were averaged: one model
    assert list_checkpoints(tmp_path / "ckpt") == [1, 2]
