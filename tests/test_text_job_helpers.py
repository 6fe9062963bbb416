"""Helpers of ``gpuseg text`` that need no model: config checks and the static model's copy."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf

from gpuseg.jobs.text import _aggregate_memory_mb, _copy_static_model
from gpuseg.runtime.errors import ConfigError
from gpuseg.text.static import RECORD


@pytest.mark.parametrize("value", [8, 15.9, "lots", True, None, float("nan")])
def test_aggregate_memory_mb_names_its_key_in_the_standard_form(value):
    cfg = OmegaConf.create({"text": {"aggregate_memory_mb": value}})
    with pytest.raises(ConfigError) as err:
        _aggregate_memory_mb(cfg)
    assert err.value.config_key == "text.aggregate_memory_mb"
    assert str(err.value.args[0]).startswith("The 'aggregate_memory_mb' parameter of text must be a float in the "
                                             f"range [16.0, inf). Got {value!r} instead.")


def test_aggregate_memory_mb_default_and_values():
    assert _aggregate_memory_mb(OmegaConf.create({"text": {}})) == 2048.0
    assert _aggregate_memory_mb(OmegaConf.create({"text": {"aggregate_memory_mb": 16}})) == 16.0
    assert _aggregate_memory_mb(OmegaConf.create({"text": {"aggregate_memory_mb": 512.5}})) == 512.5


def _distilled(folder, fingerprint):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(fingerprint.encode())
    (folder / RECORD).write_text(json.dumps({"fingerprint": fingerprint}))


def test_copy_static_model_copies_reuses_and_replaces_whole(tmp_path, monkeypatch):
    shared, local = tmp_path / "cache", tmp_path / "work" / "text" / "static_model"
    _distilled(shared, "one")
    _copy_static_model(shared, local)
    assert (local / "model.safetensors").read_bytes() == b"one" and (local / RECORD).is_file()

    # the same distillation is already there: nothing is copied
    (local / "note").write_text("kept")
    _copy_static_model(shared, local)
    assert (local / "note").read_text() == "kept"

    # a copy that fails half-way leaves the old model in place and no temporary folder
    _distilled(shared, "two")
    def broken(src, dst, **kwargs):
        (dst / "model.safetensors").write_bytes(b"tw")
        raise OSError("disk full")
    monkeypatch.setattr(shutil, "copytree", broken)
    with pytest.raises(OSError, match="disk full"):
        _copy_static_model(shared, local)
    monkeypatch.undo()
    assert (local / "model.safetensors").read_bytes() == b"one"
    assert sorted(p.name for p in local.parent.iterdir()) == ["static_model"]

    # another distillation in the cache replaces the copy whole (the old files go)
    _copy_static_model(shared, local)
    assert (local / "model.safetensors").read_bytes() == b"two" and not (local / "note").exists()
    assert sorted(p.name for p in local.parent.iterdir()) == ["static_model"]
