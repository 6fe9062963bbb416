"""Thread choice of MiniBatchKMeans (gpuseg issue 12): the rule, its plumbing, and that the
thread count never changes a seeded result."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.cluster import _engine as eng
from gpuseg.cluster import _threads as thr
from gpuseg.runtime.validation import InvalidParameterError

BIG = 8 * thr.MIN_WORK_PER_THREAD


def _no_probe():
    raise AssertionError("the load probe must not run for this work size")


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the choosing function


def test_small_work_gets_one_thread_without_probing():
    assert thr.choose_threads(thr.MIN_WORK_PER_THREAD - 1, cores=8, busy=_no_probe) == 1
    assert thr.choose_threads(1.9 * thr.MIN_WORK_PER_THREAD, cores=8, busy=_no_probe) == 1


def test_work_caps_threads():
    assert thr.choose_threads(2.5 * thr.MIN_WORK_PER_THREAD, cores=8, busy=0.0) == 2
    assert thr.choose_threads(BIG, cores=8, busy=0.0) == 8
    assert thr.choose_threads(BIG, cores=4, busy=0.0) == 4


@pytest.mark.parametrize("busy, expected", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (2.0, 1),
                                            (7.0, 1), (None, 2)])
def test_busy_cores_are_left_out(busy, expected):
    assert thr.choose_threads(BIG, cores=2, busy=busy) == expected


def test_busy_on_many_cores():
    assert thr.choose_threads(BIG, cores=8, busy=3.0) == 5
    assert thr.choose_threads(BIG, cores=8, busy=lambda: 6.2) == 2


def test_explicit_requests_win():
    assert thr.choose_threads(1.0, 3, cores=1, busy=_no_probe) == 3
    assert thr.choose_threads(BIG, "torch", cores=8, busy=_no_probe) is None


def test_auto_never_exceeds_torch_setting(torch_threads):
    torch.set_num_threads(1)
    assert thr.choose_threads(BIG, busy=_no_probe) == 1


def test_cuda_phases_leave_torch_alone(torch_threads):
    lim = thr.phase_threads(torch.device("cuda"), BIG, 1)
    assert lim.n is None


def test_limit_threads_sets_restores_and_is_reusable(torch_threads):
    torch.set_num_threads(2)
    lim = thr.limit_threads(1)
    for _ in range(2):
        with lim:
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), thr.limit_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_available_cores_is_within_the_machine():
    assert 1 <= thr.available_cores() <= (os.cpu_count() or 1)


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux /proc")
def test_probe_sees_a_spinning_process():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = thr.busy_elsewhere()
        # the spinner is always runnable; scaled by this process's share of the CPUs
        assert busy is not None and busy >= thr.available_cores() / (os.cpu_count() or 1) - 1e-9
    finally:
        spin.kill()
        spin.wait()


# ------------------------------------------------------------------- the estimator


def _data(n=6000, d=8, k=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-10, 10, (k, d))
    return (c[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _fit(X, n_threads, **kw):
    return MiniBatchKMeans(12, random_state=3, device="cpu", batch_size=512, chunk_size=700,
                           n_threads=n_threads, **kw).fit(X)


@pytest.mark.parametrize("other", [2, None, "torch"])
def test_one_thread_and_others_give_identical_results(torch_threads, other):
    if torch_threads < 2 and other == 2:
        torch.set_num_threads(2)  # make the default really differ from 1 thread
    X = _data()
    a, b = _fit(X, 1), _fit(X, other)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_ and a.n_steps_ == b.n_steps_
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.transform(X[:500]), b.transform(X[:500]))
    assert a.score(X) == b.score(X)


def test_partial_fit_identical_across_threads(torch_threads):
    torch.set_num_threads(2)
    X = _data()
    models = [MiniBatchKMeans(12, random_state=3, device="cpu", n_threads=n) for n in (1, 2)]
    for i in range(0, X.shape[0], 1500):
        for m in models:
            m.partial_fit(X[i : i + 1500])
    np.testing.assert_array_equal(models[0].cluster_centers_, models[1].cluster_centers_)


def test_fit_restores_torch_threads(torch_threads):
    torch.set_num_threads(2)
    _fit(_data(), 1)
    assert torch.get_num_threads() == 2


def test_auto_seeds_with_one_thread(monkeypatch, torch_threads):
    """k-means++ is many tiny regions: auto runs it single-threaded, n_threads=2 does not."""
    torch.set_num_threads(2)
    seen = []
    real = eng.kmeans_plusplus

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(eng, "kmeans_plusplus", spy)
    _fit(_data(), None)
    _fit(_data(), 2)
    assert seen[0] == 1 and seen[-1] == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "auto", "2"])
def test_invalid_n_threads_names_the_parameter(bad):
    with pytest.raises(InvalidParameterError, match="'n_threads' parameter of MiniBatchKMeans"):
        MiniBatchKMeans(3, n_threads=bad).fit(_data(300))
