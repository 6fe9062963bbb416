"""``io.atomic_dir``: a folder appears whole or not at all, and a killed write's leftovers are cleared."""

from __future__ import annotations

import os

import pytest

from gpuseg.runtime.io import atomic_dir, umask
from gpuseg.runtime.publish import staged_outputs


def test_atomic_dir_swaps_a_whole_folder_in_and_keeps_the_old_one_on_failure(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as stage:
        assert stage.parent == tmp_path and stage.is_dir() and not any(stage.iterdir())
        (stage / "a.txt").write_text("first")
        assert not final.exists()  # nothing under the final name before the block succeeds
    assert (final / "a.txt").read_text() == "first"
    assert os.stat(final).st_mode & 0o777 == 0o777 & ~umask()  # not mkdtemp's 0700

    with pytest.raises(RuntimeError):
        with atomic_dir(final) as stage:
            (stage / "b.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]  # the old folder, untouched

    with atomic_dir(final) as stage:
        (stage / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left


def test_a_leftover_atomic_dir_folder_is_removed_at_the_next_start(tmp_path):
    work = tmp_path / "work"
    leftover = work / "text" / ".static_model.abc123.tmp"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "model.safetensors").write_bytes(b"half a copy")
    with staged_outputs(work, "text", "text") as stage:
        assert not list(stage.rglob(".*.tmp"))
        (stage / "embeddings.parquet").write_bytes(b"x")
    assert sorted(p.name for p in (work / "text").iterdir()) == [".publish.json", "embeddings.parquet"]
