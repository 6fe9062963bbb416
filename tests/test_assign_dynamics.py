"""The L1 pieces of ``gpuseg assign``: hysteresis, transitions, flip-flops, PSI, the ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.dynamics import Ledger, as_of_folder, assign_stream, flip_flops, psi, transitions
from gpuseg.dynamics.assign import folder_as_of_us
from gpuseg.dynamics.ledger import input_files, sha256_of


def _model() -> MiniBatchKMeans:
    x = np.array([[0.0, 0.0], [10.0, 0.0]] * 50, dtype=np.float32)
    return MiniBatchKMeans(n_clusters=2, random_state=0, device="cpu", n_init=1).fit(x)


def test_hysteresis_margin_and_votes():
    model = _model()
    left = int(model.predict(np.array([[0.0, 0.0]], np.float32))[0])
    right = 1 - left
    # 6.0 is nearer the right centre by 1 - 4/6 = 0.33; 5.5 by only 1 - 4.5/5.5 = 0.18
    x = torch.tensor([[6.0, 0.0], [5.5, 0.0], [1.0, 0.0], [9.0, 0.0]])
    prev = np.array([left, left, left, -1])
    plain = assign_stream(model, x, prev, margin=0.0, chunk_rows=3)
    assert plain.segment.tolist() == [right, right, left, right] and not plain.held.any()
    sticky = assign_stream(model, x, prev, margin=0.25, chunk_rows=3)
    assert sticky.segment.tolist() == [right, left, left, right]
    assert sticky.held.tolist() == [False, True, False, False]
    assert sticky.candidate.tolist() == [-1, right, -1, -1] and sticky.votes.tolist() == [0, 1, 0, 0]
    # the second consecutive vote confirms the move
    confirmed = assign_stream(model, x, prev, margin=0.25, confirm_runs=2, candidate=sticky.candidate,
                              votes=sticky.votes)
    assert confirmed.segment[1] == right and confirmed.votes[1] == 0
    # the held customer's distance is to its own (previous) centre
    np.testing.assert_allclose(sticky.distance[1], 5.5 - model.cluster_centers_[left, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="margin"):
        assign_stream(model, x, prev, margin=1.0)


def test_transitions_count_every_customer_and_flip_flops_are_returns():
    prev = np.array([-1, 0, 0, 1, 1])
    seg = np.array([2, 0, 1, 0, 1])
    table = transitions(prev, seg).to_pylist()
    assert sum(t["count"] for t in table) == 5
    assert {"from": None, "to": 2, "count": 1} in table
    flips = flip_flops(np.array([-1, 1, 1, 0, -1]), prev, seg)
    assert flips.tolist() == [False, False, True, True, False]


def test_psi_is_zero_on_the_same_data_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000)
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12)
    small, large = psi(a, a + 0.1), psi(a, a + 1.0)
    assert 0 < small < 0.1 < 0.25 < large
    # a feature becoming undefined drifts too (NaN bin)
    b = a.copy()
    b[:2000] = np.nan
    assert psi(a, b) > 0.25


def test_as_of_folders_are_safe_and_read_back():
    assert as_of_folder("2024-06-30") == "2024-06-30"
    assert as_of_folder("2024-06-30 12:00:05") == "2024-06-30T120005"
    assert folder_as_of_us("2024-06-30T120005") > folder_as_of_us("2024-06-30")
    assert folder_as_of_us("increments") is None


def test_the_ledger_knows_files_by_content(tmp_path):
    inbox = tmp_path / "in"
    (inbox / "texts").mkdir(parents=True)
    (inbox / "events_1.csv").write_text("a,b\n1,2\n")
    (inbox / "texts" / "reviews.csv").write_text("a,b\n3,4\n")
    (inbox / ".hidden.csv").write_text("x\n")
    found = input_files(inbox)
    assert [(p.name, t) for p, t in found] == [("events_1.csv", "events"), ("reviews.csv", "texts")]
    ledger = Ledger()
    digest = sha256_of(found[0][0])
    ledger.consume(found[0][0], digest, "events", "2025-01-01", 10)
    ledger.save(tmp_path / "ledger.json")
    again = Ledger.load(tmp_path / "ledger.json")
    assert again.known(digest)["size"] == 8 and again.up_to(9) == [] and len(again.up_to(10)) == 1
