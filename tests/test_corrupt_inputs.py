"""Corrupt or truncated input files are a message naming the table, exit 2, and nothing is published."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

GPUSEG = shutil.which("gpuseg")


def _gpuseg(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [GPUSEG] if GPUSEG else [sys.executable, "-m", "gpuseg"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("damage", ["flipped data pages", "truncated"])
def test_a_damaged_events_file_is_a_message_and_publishes_nothing(tmp_path, damage):
    work = f"paths.work_dir={tmp_path / 'work'}"
    out = _gpuseg("generate", work, "data.generator.n_customers=300", "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    events = tmp_path / "work" / "data" / "events.parquet"
    data = bytearray(events.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # the bytes of the data pages flipped, the footer intact: values decode to garbage
        for i in range(len(data) // 4, len(data) // 2, 7):
            data[i] ^= 0xFF
    events.write_bytes(bytes(data))
    out = _gpuseg("validate", work, "progress=false", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "'events'" in out.stderr or str(events) in out.stderr
    assert not (tmp_path / "work" / "validated").exists()  # no half-validated set left behind


def test_a_validate_that_fails_on_texts_leaves_the_previous_set_whole(tmp_path):
    from gpuseg.runtime.publish import read_record, verify_folder

    work = tmp_path / "work"
    keys = (f"paths.work_dir={work}", "data.generator.n_customers=300", "progress=false")
    for job in ("generate", "validate"):
        out = _gpuseg(job, *keys, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
    before = read_record(work / "validated")
    customers = (work / "validated" / "customers.parquet").read_bytes()
    texts = work / "data" / "texts.parquet"
    texts.write_bytes(texts.read_bytes()[:100])  # customers and events still fine: texts fail last
    out = _gpuseg("validate", *keys, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "texts" in out.stderr
    assert verify_folder(work / "validated", "validate")["id"] == before["id"]  # the old set, whole
    assert (work / "validated" / "customers.parquet").read_bytes() == customers
    out = _gpuseg("features", *keys, cwd=tmp_path)  # runs on the old, consistent set
    assert out.returncode == 0, out.stderr[-2000:]
