"""``gpuseg export`` end to end on a small generated customer table with personal data and consent."""

from __future__ import annotations

import csv
import hashlib
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_table

from gpuseg.data.mapping import DataMapping
from gpuseg.runtime.errors import ConfigError, UserInputError

N = 60
CONSENT_VALUES = ["yes", "no", "1", "0", "true", ""]


def _customers(n=N):
    """Customers with e-mail, phone, name, a numeric attribute and a consent column.

    Every tenth e-mail is broken and every seventh phone is text (unusable); even ids have a
    national number, odd ids an international one.
    """
    rng = np.random.default_rng(0)
    ids = [f"c{i:03d}" for i in range(n)]
    emails = [("broken-address" if i % 10 == 3 else f"  Person.{i}@Example.COM ") for i in range(n)]
    phones = [("ask at reception" if i % 7 == 5 else f"(514) 555-{i:04d}" if i % 2 == 0 else f"+44 (0)20 7946 {i:04d}")
              for i in range(n)]
    return {"customer_id": ids, "email": emails, "phone": phones, "first_name": [f" Name{i} " for i in range(n)],
            "age": rng.integers(18, 80, n).astype(float), "opt_in": [CONSENT_VALUES[i % 6] for i in range(n)]}


def _consents(i):
    return CONSENT_VALUES[i % 6] in ("yes", "1", "true")


def _validate(make_cfg, tmp_path, *extra, consent=True, columns=None):
    path = write_table(tmp_path / "in" / "customers.csv", columns or _customers())
    pii = "data.customers.pii=[email,phone,first_name]"
    args = ["data=custom", f"data.customers.path={path}", "data.events.path=null", "data.as_of=2024-06-30",
            "data.customers.numeric=[age]", pii, *extra]
    if consent:
        args.append("data.customers.consent=opt_in")
    from gpuseg.jobs import validate

    validate.run(make_cfg("validate", *args))
    return tmp_path / "work"


def _audience(work, ids, name="vip"):
    write_table(work / "audiences" / f"{name}.parquet", {"customer_id": ids})


def _export(make_cfg, *overrides):
    from gpuseg.jobs import export

    return export.run(make_cfg("export", *overrides))


def test_validate_keeps_personal_data_and_consent_out_of_customers(make_cfg, tmp_path):
    work = _validate(make_cfg, tmp_path)
    customers = pq.read_table(work / "validated" / "customers.parquet")
    assert customers.column_names == ["customer_id", "age"]
    pii = pq.read_table(work / "validated" / "pii.parquet")
    assert pii.column_names == ["customer_id", "email", "phone", "first_name", "opt_in"]
    assert pii["opt_in"].type == pa.bool_()
    assert pii["opt_in"].to_pylist() == [_consents(i) for i in range(N)]
    schema = json.loads((work / "validated" / "schema.json").read_text())
    assert schema["customers"]["pii"] == {"email": "email", "phone": "phone", "first_name": "first_name"}
    assert schema["customers"]["consent"] == "opt_in"
    # the features never see them either
    from gpuseg.jobs import features

    features.run(make_cfg("features", "data=custom", "data.events.path=null", "data.as_of=2024-06-30"))
    names = " ".join(pq.read_table(work / "features" / "features.parquet").column_names).lower()
    assert "email" not in names and "phone" not in names and "opt_in" not in names and "name" not in names


def test_export_audience_filters_consent_and_hashes_normalised_values(make_cfg, tmp_path):
    work = _validate(make_cfg, tmp_path)
    listed = [f"c{i:03d}" for i in range(0, N, 2)] + [f"c{i:03d}" for i in range(1, 20, 2)]
    _audience(work, listed + listed[:3])  # repeated rows: exported once
    result = _export(make_cfg, "export.audience=vip", "export.default_country_code=1",
                     "export.include_customer_id=true")
    path = work / "exports" / "vip.csv"
    assert result["export_path"] == str(path)
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert list(rows[0]) == ["customer_id", "email_sha256", "phone_sha256", "first_name_sha256"]
    index = [int(c[1:]) for c in listed]
    consented = [i for i in index if _consents(i)]
    assert [r["customer_id"] for r in rows] == [f"c{i:03d}" for i in consented]
    summary = json.loads((work / "exports" / "vip.json").read_text())
    assert summary["rows"] == len(consented) and summary["listed"] == len(listed)
    assert summary["consent"] == {"column": "opt_in", "filtered_out": len(listed) - len(consented)}
    assert summary["unusable"] == {"email_sha256": sum(i % 10 == 3 for i in consented),
                                   "phone_sha256": sum(i % 7 == 5 for i in consented), "first_name_sha256": 0}
    assert summary["hashed"] is True and summary["platform"] == "generic"
    assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for row, i in zip(rows, consented, strict=True):
        email = "" if i % 10 == 3 else hashlib.sha256(f"person.{i}@example.com".encode()).hexdigest()
        assert row["email_sha256"] == email  # unusable: empty, never a hash of garbage
        phone = ("" if i % 7 == 5 else f"+1514555{i:04d}" if i % 2 == 0 else f"+44207946{i:04d}")
        assert row["phone_sha256"] == (hashlib.sha256(phone.encode()).hexdigest() if phone else "")
        assert row["first_name_sha256"] == hashlib.sha256(f"name{i}".encode()).hexdigest()


def test_without_default_country_code_national_numbers_are_unusable(make_cfg, tmp_path):
    work = _validate(make_cfg, tmp_path)
    _audience(work, [f"c{i:03d}" for i in range(N)])
    _export(make_cfg, "export.audience=vip")
    summary = json.loads((work / "exports" / "vip.json").read_text())
    consented = [i for i in range(N) if _consents(i)]
    national_or_bad = sum(i % 2 == 0 or i % 7 == 5 for i in consented)
    assert summary["unusable"]["phone_sha256"] == national_or_bad
    assert summary["default_country_code"] is None


def test_segment_export_for_meta_as_parquet(make_cfg, tmp_path):
    work = _validate(make_cfg, tmp_path)
    write_table(work / "segment" / "segments.parquet",
                {"customer_id": [f"c{i:03d}" for i in range(N)], "segment": [i % 3 for i in range(N)]})
    _export(make_cfg, "export.segment=[0,2]", "export.platform=meta", "export.format=parquet",
            "export.default_country_code=1")
    table = pq.read_table(work / "exports" / "segment_0_2.parquet")
    assert table.column_names == ["email", "phone", "fn", "segment"]
    expected = [i for i in range(N) if i % 3 in (0, 2) and _consents(i)]
    assert table["segment"].to_pylist() == [i % 3 for i in expected]
    first = expected[0]
    assert table["phone"][0].as_py() == hashlib.sha256(f"1514555{first:04d}".encode()).hexdigest()
    summary = json.loads((work / "exports" / "segment_0_2.json").read_text())
    assert summary["source"] == {"kind": "segment", "value": [0, 2]} and summary["format"] == "parquet"


def test_google_headers_and_gmail_rule(make_cfg, tmp_path):
    columns = _customers(12)
    columns["email"] = [f" First.Last{i}@GMAIL.com" for i in range(12)]
    work = _validate(make_cfg, tmp_path, columns=columns)
    _audience(work, [f"c{i:03d}" for i in range(12)], name="g")
    _export(make_cfg, "export.audience=g", "export.platform=google", "export.name=google_list")
    rows = list(csv.DictReader((work / "exports" / "google_list.csv").open(encoding="utf-8")))
    assert list(rows[0]) == ["Email", "Phone", "First Name"]
    assert rows[0]["Email"] == hashlib.sha256(b"firstlast0@gmail.com").hexdigest()


def test_no_consent_column_and_clear_export_warn(make_cfg, tmp_path, caplog):
    work = _validate(make_cfg, tmp_path, consent=False)
    _audience(work, ["c000", "c001", "c003"])
    with caplog.at_level(logging.WARNING):
        _export(make_cfg, "export.audience=vip", "export.hash=false", "export.default_country_code=1")
    text = caplog.text
    assert "no consent column is configured" in text
    assert "IN CLEAR" in text
    rows = list(csv.DictReader((work / "exports" / "vip.csv").open(encoding="utf-8")))
    assert [r["email"] for r in rows] == ["person.0@example.com", "person.1@example.com", ""]
    assert rows[0]["phone"] == "+15145550000"
    summary = json.loads((work / "exports" / "vip.json").read_text())
    assert summary["hashed"] is False and summary["consent"] == {"column": None, "filtered_out": 0}
    # no identifier value in the log lines, hashed or not
    assert "person.0" not in text and "5550000" not in text


def test_exports_accumulate_and_are_staged(make_cfg, tmp_path):
    work = _validate(make_cfg, tmp_path)
    _audience(work, ["c000", "c002"], name="a")
    _audience(work, ["c004"], name="b")
    _export(make_cfg, "export.audience=a")
    _export(make_cfg, "export.audience=b")
    assert {p.name for p in (work / "exports").iterdir() if not p.name.startswith(".")} == {
        "a.csv", "a.json", "b.csv", "b.json"}
    assert not (work / ".staging" / "exports").exists()


@pytest.mark.parametrize(("overrides", "key"), [
    ([], "export.audience"),
    (["export.audience=vip", "export.lookalike=true"], "export.audience"),
    (["export.audience=../vip"], "export.audience"),
    (["export.audience=vip", "export.platform=tiktok"], "export.platform"),
    (["export.audience=vip", "export.format=xlsx"], "export.format"),
    (["export.audience=vip", "export.default_country_code=4"], "export.default_country_code"),
    (["export.audience=vip", "export.hash=maybe"], "export.hash"),
    (["export.segment=[]"], "export.segment"),
])
def test_bad_export_settings_name_the_key(make_cfg, tmp_path, overrides, key):
    work = _validate(make_cfg, tmp_path)
    _audience(work, ["c000"])
    with pytest.raises(ConfigError) as info:
        _export(make_cfg, *overrides)
    assert info.value.config_key == key


def test_missing_inputs_are_clear_errors(make_cfg, tmp_path):
    work = _validate(make_cfg, tmp_path)
    with pytest.raises(UserInputError, match="gpuseg audience") as info:
        _export(make_cfg, "export.audience=nope")
    assert info.value.config_key == "export.audience"
    _audience(work, ["c000", "zz-unknown"])
    with pytest.raises(UserInputError, match="lacks 1 customer") as info:
        _export(make_cfg, "export.audience=vip")
    assert info.value.config_key == "export.audience"


def test_export_without_declared_personal_data_is_an_error(make_cfg, tmp_path):
    from gpuseg.jobs import validate

    path = write_table(tmp_path / "in" / "customers.csv", {"customer_id": ["a", "b"], "age": [1.0, 2.0]})
    validate.run(make_cfg("validate", "data=custom", f"data.customers.path={path}", "data.events.path=null",
                          "data.as_of=2024-06-30", "data.customers.numeric=[age]"))
    _audience(tmp_path / "work", ["a"])
    with pytest.raises(UserInputError) as info:
        _export(make_cfg, "export.audience=vip")
    assert info.value.config_key == "data.customers.pii"


def test_pii_declarations_are_checked():
    base = {"path": "c.csv"}
    kinds = DataMapping.from_dict({"customers": {**base, "pii": ["E-Mail", "PhoneNumber", "Surname", "ZIP",
                                                                 {"Fax": "other"}]}}).customers.pii
    assert kinds == {"E-Mail": "email", "PhoneNumber": "phone", "Surname": "last_name", "ZIP": "postcode",
                     "Fax": "other"}
    mapped = DataMapping.from_dict({"customers": {**base, "pii": {"Mail": "email", "Mobile": "phone"}}})
    assert mapped.customers.pii == {"Mail": "email", "Mobile": "phone"}
    bad = [
        ({"pii": ["loyalty_code"]}, "data.customers.pii.loyalty_code", "cannot tell the kind"),
        ({"pii": {"Mail": "e-mail"}}, "data.customers.pii.Mail", "must be one of"),
        ({"pii": ["email", {"email2": "email"}]}, "data.customers.pii.email2", "one column per kind"),
        ({"pii": ["email"], "categorical": ["email"]}, "data.customers.categorical", "never becomes a feature"),
        ({"pii": ["email"], "consent": "email"}, "data.customers.consent", "both the consent column"),
        ({"consent": "opt_in", "labels": ["opt_in"]}, "data.customers.labels", "consent column"),
        ({"pii": "email"}, "data.customers.pii", "must list"),
    ]
    for extra, key, message in bad:
        with pytest.raises(ConfigError, match=message) as info:
            DataMapping.from_dict({"customers": {**base, **extra}})
        assert info.value.config_key == key, extra


def test_consent_values_that_are_not_yes_or_no_stop_validate(make_cfg, tmp_path):
    columns = _customers(6)
    columns["opt_in"] = ["yes", "maybe", "no", "", "1", "0"]
    with pytest.raises(UserInputError, match="consent") as info:
        _validate(make_cfg, tmp_path, columns=columns)
    assert info.value.config_key == "data.customers.consent"


def test_errors_and_rejects_never_show_personal_data(make_cfg, tmp_path):
    columns = _customers(8)
    columns["customer_id"][1] = columns["customer_id"][0]  # a duplicate customer: its row goes to the rejects
    work = _validate(make_cfg, tmp_path, "data.policy.duplicate_customer=last", columns=columns)
    rejects = pq.read_table(work / "validated" / "rejects" / "customers.parquet")
    assert rejects.num_rows == 1
    record = json.loads(rejects["record"][0].as_py())
    assert set(record) == {"customer_id", "age", "opt_in"}
    columns = _customers(8)
    columns["age"] = [str(v) for v in columns["age"]]
    columns["age"][2] = "old"
    with pytest.raises(UserInputError) as info:
        _validate(make_cfg, tmp_path / "again", columns=columns)
    message = str(info.value)
    assert "old" in message and "example.com" not in message.lower() and "514" not in message


def test_lookalike_export_has_each_customer_once(make_cfg, tmp_path):
    work = _validate(make_cfg, tmp_path)
    # two queries of a lookalike run may rank the same customer: the first row wins
    write_table(work / "lookalike" / "audience.parquet",
                {"query": ["a", "a", "b", "b"], "rank": [1, 2, 1, 2], "customer_id": ["c000", "c002", "c002", "c004"],
                 "score": [0.9, 0.8, 0.95, 0.7]})
    result = _export(make_cfg, "export.lookalike=true", "export.include_customer_id=true")
    rows = list(csv.DictReader((work / "exports" / "lookalike.csv").open(encoding="utf-8")))
    assert [r["customer_id"] for r in rows] == [c for c in ("c000", "c002", "c004") if _consents(int(c[1:]))]
    assert result["listed"] == 3
