"""Chinook's personal data (names, e-mail, phone, address) end to end: it reaches only the export, hashed.

The whole pipeline runs on the real Chinook store database with its customers' personal data
declared as ``pii`` (gpuseg/conf/data/chinook.yaml), then ``gpuseg export`` writes every segment.
Every file the work directory then holds (artifacts, report HTML, manifests, rejects, publish
records; Parquet files read value by value) and every log line are searched for each customer's
raw e-mail and phone number: none may be found anywhere but in ``validated/pii.parquet``, the one
file that holds them by design.
"""

from __future__ import annotations

import csv
import hashlib
import logging

import pyarrow.parquet as pq
import pytest
from conftest import REPO

CHINOOK = REPO.parent / "shared" / "data" / "chinook"


def _people():
    with (CHINOOK / "customer.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _needles(people):
    """Each raw e-mail and phone as written, and in the forms normalisation gives them (unhashed)."""
    needles = set()
    for p in people:
        for value in (p["Email"], p["Phone"]):
            if value:
                needles |= {value, value.strip().lower()}
        digits = "".join(ch for ch in p["Phone"] if ch.isdigit())
        if len(digits) >= 8:
            needles.add(digits)
    return needles


def _texts(work):
    """(file, text) for every file in the work directory; Parquet files as the text of their values."""
    for path in sorted(work.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            values = [str(v) for col in table.columns for v in col.to_pylist()]
            yield path, "\n".join(values + table.column_names)
        else:
            yield path, path.read_bytes().decode("utf-8", errors="replace")


@pytest.mark.skipif(not CHINOOK.exists(), reason="the shared Chinook data are not beside the checkout")
def test_chinook_personal_data_reaches_only_the_hashed_export(make_cfg, tmp_path, caplog):
    from gpuseg.jobs import export, run

    people = _people()
    with caplog.at_level(logging.DEBUG):
        run.run(make_cfg("run", "data=chinook", f"paths.data_dir={CHINOOK}", "device=cpu",
                         "segment.confidence.n_bootstrap=1", "segment.selection.n_bootstrap=1", "journey.epochs=2"))
        work = tmp_path / "work"
        segments = sorted(set(pq.read_table(work / "segment" / "segments.parquet")["segment"].to_pylist()))
        export.run(make_cfg("export", "data=chinook", f"paths.data_dir={CHINOOK}",
                            f"export.segment=[{','.join(map(str, segments))}]", "export.name=everyone"))
        export.run(make_cfg("export", "data=chinook", f"paths.data_dir={CHINOOK}",
                            f"export.segment=[{','.join(map(str, segments))}]", "export.name=meta",
                            "export.platform=meta"))

    # validate kept the personal data in its own file, out of the customers table
    pii = pq.read_table(work / "validated" / "pii.parquet")
    assert pii.column_names == ["customer_id", "first_name", "last_name", "email", "phone", "city", "state",
                                "postcode", "address", "fax"]
    assert "email" not in pq.read_table(work / "validated" / "customers.parquet").column_names

    needles = _needles(people)
    searched = 0
    for path, text in _texts(work):
        if path == work / "validated" / "pii.parquet":
            # the one home of the raw values: the search would find them there
            assert "luisg@embraer.com.br" in text and "+55 (12) 3923-5555" in text
            continue
        searched += 1
        found = sorted(n for n in needles if n in text)
        assert not found, f"{path.relative_to(work)} holds personal data: {found[:3]}"
    assert searched > 20  # artifacts, report, manifests, records: the search covered the work directory
    assert (work / "profile" / "report.html").exists() and (work / "manifests" / "export.json").exists()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [n for n in needles if n in logged]
    assert "no consent column is configured" in logged  # Chinook has none: the export says so

    # the export holds the hashes of the normalised values, per the platform's rule
    rows = {r["email_sha256"]: r for r in csv.DictReader((work / "exports" / "everyone.csv").open(encoding="utf-8"))}
    assert len(rows) == len(people) == 59
    by_id = {p["CustomerId"]: p for p in people}
    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    luis = rows[sha("luisg@embraer.com.br")]
    assert luis["phone_sha256"] == sha("+551239235555")  # +55 (12) 3923-5555
    assert luis["first_name_sha256"] == sha("luís")
    leonie = rows[sha(by_id["2"]["Email"].strip().lower())]
    assert leonie["phone_sha256"] == sha("+497112842222")  # +49 0711 2842222: the trunk 0 dropped
    assert leonie["city_sha256"] == sha("stuttgart")
    francois = rows[sha("ftremblay@gmail.com")]
    assert francois["postcode_sha256"] == sha("h2g 1a7")
    meta_rows = list(csv.DictReader((work / "exports" / "meta.csv").open(encoding="utf-8")))
    assert {r["phone"] for r in meta_rows} >= {sha("551239235555"), sha("497112842222")}
    assert {r["ct"] for r in meta_rows} >= {sha("sãojosédoscampos")}
