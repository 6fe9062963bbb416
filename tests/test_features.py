"""RFM+ features and TabularTransform on small hand-made canonical tables."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.data.events import to_microseconds
from gpuseg.data.schema import EVENTS, TEXTS
from gpuseg.features import RFMFeaturizer, TabularTransform, compute_rfm_features, sanitize_name
from gpuseg.features.rfm import _sorted_pairs
from gpuseg.runtime.errors import ConfigError, UserInputError

AS_OF = datetime(2024, 1, 31)
W = 10  # recent window (days): recent [Jan 21, Jan 31), previous [Jan 11, Jan 21)
IDS = ["c3", "c1", "c2", "c4"]  # not sorted on purpose; c3 only has events at/after as_of, c4 none


def d(day: str, hour: int = 0) -> datetime:
    return datetime.fromisoformat(day) + timedelta(hours=hour)


# customer, timestamp, event_type, amount, category, channel
BASE_EVENTS = [
    ("c1", d("2024-01-01", 10), "purchase", 10.0, "A", "web"),
    ("c1", d("2024-01-01", 10), "purchase", 5.0, "B", "web"),  # same occasion, second line
    ("zz", d("2024-01-05"), "purchase", 3.0, "Home & Garden", "web"),  # not a known customer
    ("c1", d("2024-01-11", 10), "purchase", 20.0, "A", "store"),
    ("c2", d("2023-12-01"), "review", None, None, "app"),
    ("c2", d("2024-01-15"), "return", 12.0, "B", "store"),  # return by type, positive amount
    ("c2", d("2024-01-20"), "purchase", 7.0, "C", "app"),
    ("c1", d("2024-01-25", 10), "purchase", 30.0, "A", "web"),
    ("c1", d("2024-01-26"), "purchase", -8.0, "A", "web"),  # negative amount: a return
    ("c1", d("2024-01-27"), "support_ticket", None, None, "phone"),
    ("c1", AS_OF, "purchase", 100.0, "A", "web"),  # exactly at as_of: excluded
    ("c3", AS_OF, "purchase", 50.0, "A", "web"),
    ("c1", d("2024-02-05"), "purchase", 1000.0, "A", "web"),
    ("zz", d("2024-02-06"), "purchase", 1.0, "A", "web"),
]

TEXT_ROWS = [
    ("c1", d("2024-01-10"), "review", "nice", 4.0),
    ("c1", d("2024-01-27"), "ticket", "broken", None),
    ("c2", d("2023-12-02"), "review", "meh", 2.0),
    ("c1", d("2024-02-10"), "review", "later", 1.0),  # after as_of
]


def write_events(path, rows) -> str:
    cols = list(zip(*rows, strict=True))
    table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, EVENTS, strict=True)], schema=EVENTS)
    pq.write_table(table, path)
    return str(path)


def write_texts(path, rows) -> str:
    cols = list(zip(*rows, strict=True))
    table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, TEXTS, strict=True)], schema=TEXTS)
    pq.write_table(table, path)
    return str(path)


def featurizer(**kw) -> RFMFeaturizer:
    params = dict(as_of=AS_OF, recent_window_days=W, top_n_event_types=2, top_n_channels=2, batch_size=3)
    params.update(kw)
    return RFMFeaturizer(**params)


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {r["customer_id"]: r for r in table.to_pylist()}


def bits(table: pa.Table) -> dict[str, bytes]:
    return {name: table.column(name).to_numpy().tobytes() for name in table.column_names[1:]}


@pytest.fixture
def events(tmp_path):
    return write_events(tmp_path / "events.parquet", BASE_EVENTS)


def test_hand_computed_features(events):
    feat = featurizer()
    out = feat.fit_transform(events, pa.array(IDS))
    assert out.column("customer_id").to_pylist() == IDS  # order of customer_ids, every customer
    assert all(out.schema.field(n).type == pa.float64() for n in out.column_names[1:])
    r = rows_by_id(out)
    c1 = r["c1"]
    assert c1["recency_days"] == pytest.approx(5 + 14 / 24)  # last purchase Jan 25 10:00
    assert c1["frequency"] == 3  # Jan 1 (two lines), Jan 11, Jan 25
    assert c1["n_purchase_events"] == 4  # the negative line is a return, not a purchase
    assert c1["monetary_sum"] == pytest.approx(65.0)
    assert c1["return_amount"] == pytest.approx(8.0)
    assert c1["monetary_net"] == pytest.approx(57.0)
    assert c1["monetary_mean"] == pytest.approx(65.0 / 3)
    assert c1["n_returns"] == 1 and c1["n_tickets"] == 1 and c1["n_reviews"] == 0
    assert c1["tenure_days"] == pytest.approx(29 + 14 / 24)
    assert c1["days_since_last_event"] == pytest.approx(4.0)
    assert c1["n_events"] == 6
    assert c1["interpurchase_mean_days"] == pytest.approx(12.0)  # gaps 10 and 14 days
    assert c1["interpurchase_std_days"] == pytest.approx(2.0)
    assert c1["interpurchase_median_days"] == pytest.approx(12.0)
    assert c1["trend_purchases"] == 0.0  # one occasion in each window
    assert c1["trend_spend"] == pytest.approx((30 - 20) / 50)
    assert c1["trend_activity"] == pytest.approx((3 - 1) / 4)

    c2 = r["c2"]
    assert c2["recency_days"] == pytest.approx(11.0)
    assert c2["frequency"] == 1 and c2["monetary_mean"] == pytest.approx(7.0)
    assert c2["return_amount"] == pytest.approx(12.0) and c2["monetary_net"] == pytest.approx(-5.0)
    assert c2["n_returns"] == 1 and c2["n_reviews"] == 1
    assert c2["tenure_days"] == pytest.approx(61.0)
    for stat in ("interpurchase_mean_days", "interpurchase_std_days", "interpurchase_median_days"):
        assert math.isnan(c2[stat])  # a single occasion has no gap
    assert c2["trend_purchases"] == -1.0 and c2["trend_spend"] == -1.0 and c2["trend_activity"] == -1.0

    for cid in ("c3", "c4"):  # c3's only events are at/after as_of, c4 has none
        row = r[cid]
        for name in ("n_events", "frequency", "monetary_sum", "n_returns", "trend_activity"):
            assert row[name] == 0.0
        for name in ("recency_days", "tenure_days", "monetary_mean", "interpurchase_mean_days"):
            assert math.isnan(row[name])
        assert row["share_event_purchase"] == 0.0

    stats = feat.stats_
    assert stats["events_unknown_customer"] == 1  # zz before as_of; zz after is "after as_of"
    assert stats["events_after_as_of"] == 4
    assert stats["events_used"] == len(BASE_EVENTS) - 5
    assert stats["customers_without_events"] == 2


def test_shares_vocabularies_and_safe_names(events):
    feat = featurizer(top_n_categories=10).fit(events)
    # learnt before as_of only; ties broken by value
    assert feat.event_types_ == ["purchase", "return"]
    assert feat.channels_ == ["web", "app"]
    assert feat.categories_ == ["A", "B", "C", "Home & Garden"]
    names = feat.get_feature_names_out()
    assert "share_category_home_garden" in names
    assert all(n.isidentifier() and n == n.lower() for n in names)
    r = rows_by_id(feat.transform(events, IDS))
    c1, c2 = r["c1"], r["c2"]
    assert c1["share_event_purchase"] == pytest.approx(5 / 6)
    assert c1["share_event_return"] == 0.0 and c1["share_event_other"] == pytest.approx(1 / 6)
    assert c2["share_event_return"] == pytest.approx(1 / 3)
    assert c1["share_channel_web"] == pytest.approx(4 / 6)
    assert c1["share_channel_other"] == pytest.approx(2 / 6)
    assert c2["share_channel_app"] == pytest.approx(2 / 3)
    assert c1["share_category_a"] == pytest.approx(4 / 6)  # the null category counts nowhere
    assert c1["share_category_other"] == 0.0
    assert c2["share_category_c"] == pytest.approx(1 / 3)


def test_as_of_forms_agree():
    want = to_microseconds(AS_OF)
    aware = datetime(2024, 1, 31, 1, tzinfo=timezone(timedelta(hours=1)))
    for form in ("2024-01-31", "2024-01-31T00:00:00", date(2024, 1, 31), np.datetime64("2024-01-31"), aware):
        assert to_microseconds(form) == want, form


def test_sanitize_name_and_clashes():
    assert sanitize_name("Home & Garden") == "home_garden"
    assert sanitize_name("  E-Mail!! ") == "e_mail"
    assert sanitize_name("***") == "value"


def test_clashing_values_get_distinct_columns(tmp_path):
    rows = [
        ("a", d("2024-01-02"), "purchase", 1.0, None, "Web"),
        ("a", d("2024-01-03"), "purchase", 1.0, None, "Web"),
        ("a", d("2024-01-04"), "purchase", 1.0, None, "web!"),
        ("a", d("2024-01-05"), "purchase", 1.0, None, "other"),
    ]
    feat = featurizer(top_n_channels=3)
    out = feat.fit_transform(write_events(tmp_path / "e.parquet", rows), ["a"])
    shares = {n: out.column(n)[0].as_py() for n in out.column_names if n.startswith("share_channel")}
    assert shares == {
        "share_channel_web": 0.5,
        "share_channel_other_2": 0.25,  # the value "other", apart from the "other" bucket
        "share_channel_web_2": 0.25,
        "share_channel_other": 0.0,
    }


def test_point_in_time_later_events_change_nothing(tmp_path):
    # c5's amounts sum differently depending on grouping: (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3),
    # so a sum that depended on batch boundaries would show here
    ids = IDS + ["c5"]
    c5 = [("c5", d("2024-01-0" + str(k)), "purchase", a, "A", "web") for k, a in ((2, 0.1), (3, 0.2), (4, 0.3))]
    rows = BASE_EVENTS[:2] + c5 + BASE_EVENTS[2:]
    base = featurizer().fit_transform(write_events(tmp_path / "base.parquet", rows), ids)
    assert rows_by_id(base)["c5"]["monetary_sum"] == (0.1 + 0.2) + 0.3  # row order, any batching
    later = list(rows)
    # interleave new after-as_of rows (new types/channels that would enter the vocabularies)
    for k in range(30):
        later.insert(2 * k % len(later), ("c2", d("2024-03-01"), "click", 99.0, "Z", "tv"))
    later.insert(3, ("c4", AS_OF, "purchase", 5.0, "A", "tv"))
    later[-1] = ("zz", d("2024-02-06"), "purchase", -77.0, "Q", "tv")  # change a later row
    changed = write_events(tmp_path / "later.parquet", later)
    for batch_size in (3, 7, 1000):  # batch boundaries fall elsewhere: still bit for bit
        other = featurizer(batch_size=batch_size).fit_transform(changed, ids)
        assert other.column_names == base.column_names
        assert bits(other) == bits(base)
        assert other.column("customer_id").equals(base.column("customer_id"))


def test_event_exactly_at_as_of_is_excluded(tmp_path):
    rows = [("c1", d("2024-01-30"), "purchase", 1.0, None, None), ("c1", AS_OF, "purchase", 9.0, None, None)]
    out = rows_by_id(featurizer().fit_transform(write_events(tmp_path / "e.parquet", rows), ["c1"]))
    assert out["c1"]["frequency"] == 1 and out["c1"]["monetary_sum"] == 1.0
    assert out["c1"]["recency_days"] == 1.0
    # a microsecond earlier it counts
    rows[1] = ("c1", AS_OF - timedelta(microseconds=1), "purchase", 9.0, None, None)
    out = rows_by_id(featurizer().fit_transform(write_events(tmp_path / "e2.parquet", rows), ["c1"]))
    assert out["c1"]["frequency"] == 2 and out["c1"]["monetary_sum"] == 10.0


def test_all_null_attributes_give_no_share_columns(tmp_path):
    rows = [("a", d("2024-01-02"), "purchase", None, None, None)]
    feat = featurizer()
    out = feat.fit_transform(write_events(tmp_path / "e.parquet", rows), ["a"])
    assert not any(n.startswith(("share_channel", "share_category")) for n in out.column_names)
    assert out.column("monetary_sum").to_pylist() == [0.0]  # null amount counts as 0
    assert out.column("share_event_purchase").to_pylist() == [1.0]


def test_custom_roles_and_negative_amounts(events):
    feat = featurizer(roles={"purchase": ["order"]})  # no event has type "order"
    r = rows_by_id(feat.fit_transform(events, IDS))
    assert r["c1"]["frequency"] == 0 and r["c1"]["n_purchase_events"] == 0
    assert math.isnan(r["c1"]["recency_days"])
    assert r["c1"]["n_returns"] == 1  # still a return through its negative amount
    assert r["c1"]["n_tickets"] == 1  # other roles keep their defaults


def test_texts_before_as_of(tmp_path, events):
    texts = write_texts(tmp_path / "texts.parquet", TEXT_ROWS)
    feat = featurizer()
    out = rows_by_id(feat.fit_transform(events, IDS, texts_path=texts))
    assert feat.text_sources_ == ["review", "ticket"]
    assert out["c1"]["n_texts"] == 2 and out["c1"]["n_texts_review"] == 1
    assert out["c1"]["n_texts_ticket"] == 1
    assert out["c1"]["mean_rating"] == 4.0  # the later rating 1.0 does not count
    assert out["c2"]["mean_rating"] == 2.0
    assert math.isnan(out["c4"]["mean_rating"]) and out["c4"]["n_texts"] == 0
    assert feat.stats_["texts_after_as_of"] == 1
    with pytest.raises(UserInputError, match="texts_path"):
        feat.transform(events, IDS)


def test_state_round_trip_and_errors(tmp_path, events):
    feat = featurizer().fit(events)
    path = tmp_path / "rfm.json"
    feat.save(path)
    json.loads(path.read_text())
    again = RFMFeaturizer.load(path)
    assert again.get_feature_names_out() == feat.get_feature_names_out()
    assert bits(again.transform(events, IDS)) == bits(feat.transform(events, IDS))
    one_shot = compute_rfm_features(
        events, IDS, as_of="2024-01-31", recent_window_days=W, top_n_event_types=2, top_n_channels=2
    )
    assert bits(one_shot) == bits(feat.transform(events, IDS))

    with pytest.raises(ConfigError, match="recent_window_days"):
        featurizer(recent_window_days=0).fit(events)
    with pytest.raises(ConfigError, match="as_of"):
        featurizer(as_of="last tuesday").fit(events)
    with pytest.raises(ConfigError, match="roles"):
        featurizer(roles={"refund": ["x"]}).fit(events)
    with pytest.raises(UserInputError, match="not fitted"):
        featurizer().transform(events, IDS)
    with pytest.raises(UserInputError, match="unique"):
        feat.transform(events, ["c1", "c1"])
    pq.write_table(pa.table({"customer_id": ["a"], "timestamp": pa.array([AS_OF])}), tmp_path / "bad.parquet")
    with pytest.raises(UserInputError) as err:
        feat.transform(tmp_path / "bad.parquet", IDS)
    assert err.value.table == "events" and err.value.column == "event_type"


def _reference(rows, ids, as_of, w_days):
    """Straightforward per-customer Python computation of the core features."""
    day = timedelta(days=1)
    rec_start, prev_start = as_of - w_days * day, as_of - 2 * w_days * day
    out = {}
    for cid in ids:
        ev = [r for r in rows if r[0] == cid and r[1] < as_of]
        purch = [r for r in ev if r[2] == "purchase" and not (r[3] is not None and r[3] < 0)]
        occ = sorted({r[1] for r in purch})
        gaps = [(b - a) / day for a, b in zip(occ, occ[1:], strict=False)]

        def trend(rec, prev):
            return 0.0 if rec + prev == 0 else (rec - prev) / (rec + prev)

        out[cid] = {
            "n_events": len(ev),
            "frequency": len(occ),
            "recency_days": (as_of - occ[-1]) / day if occ else math.nan,
            "tenure_days": (as_of - min(r[1] for r in ev)) / day if ev else math.nan,
            "monetary_sum": sum(r[3] or 0.0 for r in purch),
            "interpurchase_mean_days": float(np.mean(gaps)) if gaps else math.nan,
            "interpurchase_std_days": float(np.std(gaps)) if gaps else math.nan,
            "interpurchase_median_days": float(np.median(gaps)) if gaps else math.nan,
            "trend_purchases": trend(
                sum(t >= rec_start for t in occ), sum(prev_start <= t < rec_start for t in occ)
            ),
            "trend_activity": trend(
                sum(r[1] >= rec_start for r in ev), sum(prev_start <= r[1] < rec_start for r in ev)
            ),
            "n_returns": sum(r[2] == "return" or (r[3] is not None and r[3] < 0) for r in ev),
        }
    return out


def test_random_table_matches_reference(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"u{i}" for i in range(60)]
    start = datetime(2023, 10, 1)
    rows = []
    for _ in range(1500):
        cid = ids[rng.integers(0, 70) % 60] if rng.random() > 0.05 else "ghost"
        ts = start + timedelta(hours=int(rng.integers(0, 24 * 150)))  # repeats -> shared occasions
        etype = rng.choice(["purchase", "purchase", "return", "view", "review"])
        amount = float(rng.normal(20, 15)) if rng.random() > 0.1 else None
        rows.append((cid, ts, str(etype), amount, "k", "web"))
    events = write_events(tmp_path / "r.parquet", rows)
    order = list(rng.permutation(ids))
    out = rows_by_id(featurizer(batch_size=97).fit_transform(events, order))
    ref = _reference(rows, order, AS_OF, W)
    for cid in order:
        for name, want in ref[cid].items():
            got = out[cid][name]
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-9), (cid, name)


def test_sorted_pairs_packed_and_lexsort_paths_agree():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 1000, 5000).astype(np.int32)
    for values in (
        rng.integers(0, 10**6, 5000) * 1_000_000 + 1_700_000_000_000_000,  # whole seconds: packed
        rng.integers(0, 2**50, 5000),  # microseconds over decades with 2**10 groups: lexsort
    ):
        sg, sv = _sorted_pairs(g, values.astype(np.int64), 1000)
        order = np.lexsort((values, g))
        np.testing.assert_array_equal(sg, g[order])
        np.testing.assert_array_equal(sv, values[order])


# ---------------------------------------------------------------------- TabularTransform


def feature_table() -> pa.Table:
    return pa.table(
        {
            "customer_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
            "skewed": [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 500.0],
            "negskew": [-1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 500.0],
            "lin": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "holes": [1.0, None, 3.0, float("nan"), 5.0, float("inf"), 7.0, 9.0],
            "count": pa.array([1, 1, 2, 2, 3, 3, 4, 4], type=pa.int64()),
            "churned": [True, False, False, False, True, False, False, False],
            "region": ["n", "n", "n", "s", "s", "e", None, "w"],
        }
    )


def test_tabular_transform_values():
    table = feature_table()
    tt = TabularTransform(categorical=["region"], exclude=["churned"], top_n_categories=2)
    X, names = tt.fit_transform(table)
    assert X.dtype == np.float32 and X.shape == (8, len(names))
    assert names == [
        "skewed", "negskew", "lin", "holes", "count", "holes__missing",
        "region=n", "region=s", "region=__other__", "region=__missing__",
    ]  # fmt: skip
    logged = {c["name"]: c["log1p"] for c in tt.numeric_}
    assert logged == {"skewed": True, "negskew": False, "lin": False, "holes": False, "count": False}
    col = dict(zip(names, X.T, strict=True))
    # lin: median 4.5, IQR = 6.25 - 2.75 = 3.5
    np.testing.assert_allclose(col["lin"], (np.arange(1, 9) - 4.5) / 3.5, rtol=1e-6)
    # skewed: log1p then robust scaling
    lg = np.log1p(table.column("skewed").to_numpy())
    q25, q50, q75 = np.percentile(lg, [25, 50, 75])
    np.testing.assert_allclose(col["skewed"], (lg - q50) / (q75 - q25), rtol=1e-6)
    # holes: null, NaN and inf are missing -> imputed with the median 5 of [1,3,5,7,9] -> 0
    np.testing.assert_array_equal(col["holes__missing"], [0, 1, 0, 1, 0, 1, 0, 0])
    assert col["holes"][1] == 0.0 and col["holes"][5] == 0.0
    np.testing.assert_allclose(col["holes"][[0, 2, 4, 6, 7]], [-1, -0.5, 0, 0.5, 1], rtol=1e-6)
    np.testing.assert_array_equal(col["region=n"], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(col["region=__other__"], [0, 0, 0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(col["region=__missing__"], [0, 0, 0, 0, 0, 0, 1, 0])

    # new data: unseen category -> other, negative value in a log column -> clipped, a gap in
    # a column complete at fit -> imputed without indicator; same width and order
    new = table.slice(0, 2).set_column(
        3, "lin", pa.array([None, 2.0])
    ).set_column(7, "region", pa.array(["zz", "s"]))
    new = new.set_column(1, "skewed", pa.array([-5.0, 0.0]))
    X2, names2 = tt.transform(new)
    assert names2 == names and X2.shape == (2, len(names))
    c2 = dict(zip(names, X2.T, strict=True))
    assert c2["lin"][0] == 0.0 and c2["region=__other__"][0] == 1 and c2["region=s"][1] == 1
    assert c2["skewed"][0] == c2["skewed"][1] == col["skewed"][0]


def test_tabular_transform_scale_fallbacks():
    table = pa.table({"spiky": [0.0, 0.0, 0.0, 0.0, 10.0], "const": [3.0] * 5})
    X, names = TabularTransform(log1p=None).fit_transform(table)
    assert names == ["spiky", "const"]
    np.testing.assert_allclose(X[:, 0], [0, 0, 0, 0, 2.5])  # IQR 0 -> std 4
    np.testing.assert_array_equal(X[:, 1], 0.0)  # IQR 0 and std 0 -> scale 1
    tt = TabularTransform(log1p=["spiky"], scaling="standard").fit(table)
    assert [c["log1p"] for c in tt.numeric_] == [True, False]
    with pytest.raises(UserInputError, match="negative"):
        TabularTransform(log1p=["x"]).fit(pa.table({"x": [-1.0, 2.0]}))


def test_tabular_transform_json_round_trip(tmp_path):
    table = feature_table()
    tt = TabularTransform(categorical=["region"], exclude=["churned"]).fit(table)
    X, _ = tt.transform(table)
    X_again, _ = tt.transform(table)
    assert X.tobytes() == X_again.tobytes()
    tt.save(tmp_path / "tt.json")
    loaded = TabularTransform.load(tmp_path / "tt.json")
    X2, names2 = loaded.transform(table)
    assert names2 == tt.feature_names_out_ and X2.tobytes() == X.tobytes()
    via_dict = TabularTransform.from_dict(json.loads(json.dumps(tt.to_dict())))
    assert via_dict.transform(table)[0].tobytes() == X.tobytes()


def test_tabular_transform_errors():
    table = feature_table()
    tt = TabularTransform(categorical=["region"]).fit(table)
    with pytest.raises(UserInputError) as err:
        tt.transform(table.drop_columns(["lin"]))
    assert err.value.column == "lin" and "lin" in str(err.value)
    with pytest.raises(ConfigError, match="'scaling' parameter"):
        TabularTransform(scaling="minmax").fit(table)
    with pytest.raises(UserInputError) as err:
        TabularTransform(numeric=["nope"]).fit(table)
    assert err.value.column == "nope"
    with pytest.raises(UserInputError, match="numeric"):
        TabularTransform(numeric=["region"]).fit(table)
    with pytest.raises(UserInputError, match="not fitted"):
        TabularTransform().transform(table)


def test_features_feed_the_transform(events):
    raw = featurizer().fit_transform(events, IDS)
    X, names = TabularTransform().fit_transform(raw)
    assert X.shape[0] == len(IDS) and np.isfinite(X).all()
    assert "recency_days__missing" in names and "n_events__missing" not in names
