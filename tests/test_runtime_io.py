"""JSON artifacts are standard JSON: an undefined figure is null, never NaN."""

from __future__ import annotations

import json

import numpy as np

from gpuseg.runtime.io import read_json, write_json


def test_non_finite_figures_are_written_as_null(tmp_path):
    path = write_json(tmp_path / "m.json", {"auc": float("nan"), "k": np.float32(np.inf), "ok": np.float64(0.5),
                                            "rows": [1.0, np.nan], "arr": np.array([np.nan, 2.0]), "n": np.int64(3)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # strict parse
    assert read_json(path) == {"auc": None, "k": None, "ok": 0.5, "rows": [1.0, None], "arr": [None, 2.0], "n": 3}
