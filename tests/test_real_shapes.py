"""Real data shapes end to end through configuration alone: nobody lost, nothing silently wrong.

Chinook is the real normalised store database in ../shared/data; the other shapes are written
here with the exact columns of well-known public datasets (IBM Telco churn snapshot, the CDNOW
whitespace transaction log), since those files are not in the repository.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO

CHINOOK = REPO.parent / "shared" / "data" / "chinook"

TELCO_CATEGORICAL = ["Partner", "Dependents", "PhoneService", "MultipleLines", "InternetService",
                     "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV",
                     "StreamingMovies", "Contract", "PaperlessBilling", "PaymentMethod"]


def _segments_cover(work, expected_ids):
    """Every customer of the validated table has exactly one segment row, in that order."""
    customers = pq.read_table(work / "validated" / "customers.parquet")["customer_id"].to_pylist()
    segments = pq.read_table(work / "segment" / "segments.parquet")["customer_id"].to_pylist()
    assert segments == customers
    assert sorted(customers) == sorted(expected_ids)


def write_telco(path, n=400, seed=0):
    """A snapshot with the IBM Telco columns: Yes/No label, blank TotalCharges for new customers."""
    rng = np.random.default_rng(seed)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.25, 0.2])
    tenure = np.where(contract == "Month-to-month", rng.integers(0, 24, n), rng.integers(12, 72, n))
    tenure[::40] = 0  # brand-new customers: TotalCharges is a blank, as in the real file
    monthly = np.round(rng.uniform(20, 110, n), 2)
    churn_p = np.where(contract == "Month-to-month", 0.55, 0.07) * np.where(tenure < 6, 1.4, 1.0)
    churn = np.where(rng.random(n) < np.clip(churn_p, 0, 1), "Yes", "No")
    rows = ["customerID,gender,SeniorCitizen,tenure,MonthlyCharges,TotalCharges," + ",".join(TELCO_CATEGORICAL)
            + ",Churn"]
    for i in range(n):
        total = " " if tenure[i] == 0 else f"{monthly[i] * tenure[i]:.2f}"
        cats = []
        for name in TELCO_CATEGORICAL:
            if name == "Contract":
                cats.append(contract[i])
            elif name == "PaymentMethod":
                cats.append(str(rng.choice(["Electronic check", "Mailed check", "Credit card (automatic)"])))
            elif name == "InternetService":
                cats.append(str(rng.choice(["DSL", "Fiber optic", "No"])))
            else:
                cats.append(str(rng.choice(["Yes", "No"])))
        rows.append(f"{1000 + i:04d}-ABCDE,{rng.choice(['Female', 'Male'])},{int(rng.random() < 0.16)},{tenure[i]},"
                    f"{monthly[i]},{total}," + ",".join(f'"{c}"' for c in cats) + f",{churn[i]}")
    path.write_text("\n".join(rows) + "\n")
    return [f"{1000 + i:04d}-ABCDE" for i in range(n)]


def test_customers_only_snapshot_end_to_end(make_cfg, tmp_path):
    from gpuseg.jobs import run

    data = tmp_path / "telco"
    data.mkdir()
    ids = write_telco(data / "WA_Fn-UseC_-Telco-Customer-Churn.csv")
    cfg = make_cfg("run", "data=telco_churn", f"paths.data_dir={data}", "device=cpu",
                   "segment.confidence.n_bootstrap=1", "segment.selection.n_bootstrap=1")
    result = run.run(cfg)
    work = tmp_path / "work"
    assert result["stages"] == ["validate", "features", "fuse", "segment", "profile"]
    _segments_cover(work, ids)
    features = pq.read_table(work / "features" / "features.parquet")
    # the features are the attributes: no event columns of zeros, no personal attribute left unmapped
    assert "n_events" not in features.column_names and "frequency" not in features.column_names
    assert "gender" not in features.column_names and "Churn" not in features.column_names
    assert np.isnan(features["TotalCharges"].to_numpy(zero_copy_only=False)).sum() > 0
    matrix = pq.read_table(work / "features" / "matrix.parquet")
    assert "TotalCharges__missing" in matrix.column_names
    assert "Contract=Month-to-month" in matrix.column_names
    metrics = json.loads((work / "profile" / "metrics.json").read_text())
    assert metrics["churn"]["label"] == "Churn"
    assert metrics["churn"]["model"]["roc_auc"] > 0.7
    assert "rfm_logistic" not in metrics["churn"]
    assert any(n.startswith("value not estimated: the data have no events table") for n in metrics["notes"])
    # personas are named from the attributes, and the report says what was not estimated
    profiles = json.loads((work / "profile" / "profiles.json").read_text())["segments"]
    assert any("Contract" in p["name"] or "tenure" in p["name"] or "Charges" in p["name"] for p in profiles)
    html = (work / "profile" / "report.html").read_text()
    assert "value not estimated" in html
    from gpuseg.jobs.common import segments_with_scores

    seg = segments_with_scores(work).to_pandas()
    churned = pq.read_table(work / "validated" / "customers.parquet")["Churn"].to_numpy(zero_copy_only=False)
    assert set(np.unique(churned[np.isfinite(churned)])) == {0.0, 1.0}
    assert seg["churn_score"].notna().all()


@pytest.mark.skipif(not CHINOOK.exists(), reason="the shared Chinook data are not beside the checkout")
def test_chinook_store_database_end_to_end(make_cfg, tmp_path):
    from gpuseg.jobs import run

    cfg = make_cfg("run", "data=chinook", f"paths.data_dir={CHINOOK}", "device=cpu",
                   "segment.confidence.n_bootstrap=1", "segment.selection.n_bootstrap=1", "journey.epochs=2")
    result = run.run(cfg)
    work = tmp_path / "work"
    assert "journeys" in result["stages"] and "text" not in result["stages"]
    customer_ids = [str(i) for i in range(1, 60)]
    _segments_cover(work, customer_ids)
    validation = json.loads((work / "validated" / "validation.json").read_text())
    assert validation["tables"]["events"]["rows_kept"] == 412
    features = pq.read_table(work / "features" / "features.parquet")
    # genre is the event category; invoice totals are the amounts
    assert "share_category_rock" in features.column_names
    total = sum(features["monetary_sum"].to_pylist())
    assert total > 0
    # personal data (names, e-mail, phone, address) never become features
    lowered = " ".join(features.column_names).lower()
    for personal in ("firstname", "lastname", "email", "phone", "address", "postalcode", "fax"):
        assert personal not in lowered
    metrics = json.loads((work / "profile" / "metrics.json").read_text())
    assert metrics["churn"]["label"] == "no_purchase_in_holdout"


def write_cdnow(path, n_customers=400, seed=0):
    """Lines shaped like CDNOW_master.txt: zero-padded id, YYYYMMDD, CDs, dollars; blanks between."""
    rng = np.random.default_rng(seed)
    days = np.datetime64("1997-01-01") + np.arange(546)
    lines = []
    for c in range(1, n_customers + 1):
        for _ in range(1 + rng.poisson(2.5)):
            day = str(days[rng.integers(0, len(days))]).replace("-", "")
            lines.append(f"{c:05d} {day}  {rng.integers(1, 5):>2d}  {rng.uniform(5, 80):6.2f}")
    path.write_text("\n".join(lines) + "\n")
    return [f"{c:05d}" for c in range(1, n_customers + 1)], len(lines)


def test_whitespace_transaction_log_with_yyyymmdd_dates(make_cfg, tmp_path):
    from gpuseg.jobs import validate

    data = tmp_path / "cdnow"
    data.mkdir()
    ids, n_lines = write_cdnow(data / "CDNOW_master.txt")
    validate.run(make_cfg("validate", "data=cdnow", f"paths.data_dir={data}"))
    events = pq.read_table(tmp_path / "work" / "validated" / "events.parquet")
    report = json.loads((tmp_path / "work" / "validated" / "validation.json").read_text())
    rejected = sum(report["tables"]["events"]["rejected"].values())
    assert events.num_rows + rejected == n_lines
    # zero-padded ids kept as written; YYYYMMDD read as dates, not 1970 epochs
    customers = pq.read_table(tmp_path / "work" / "validated" / "customers.parquet")["customer_id"].to_pylist()
    assert sorted(customers) == ids
    ts = events["timestamp"].to_numpy(zero_copy_only=False)
    assert ts.min() >= np.datetime64("1997-01-01") and ts.max() <= np.datetime64("1998-07-01")
    from gpuseg.jobs import run

    result = run.run(make_cfg("run", "data=cdnow", f"paths.data_dir={data}", "device=cpu", "journey.epochs=1",
                              "segment.confidence.n_bootstrap=1", "segment.selection.n_bootstrap=1"))
    assert result["stages"] == ["validate", "features", "journeys", "fuse", "segment", "profile"]
    _segments_cover(tmp_path / "work", ids)
    table = pq.read_table(tmp_path / "work" / "features" / "features.parquet")
    assert np.nansum(table["monetary_sum"].to_numpy(zero_copy_only=False)) > 0


POSITIVE_PT = ["Produto excelente, chegou antes do prazo", "Muito confortável e bonito, recomendo",
               "Ótima qualidade, entrega rápida", "Adorei, superou as expectativas"]
NEGATIVE_PT = ["Péssimo atendimento, produto não chegou", "Produto com defeito, quero meu dinheiro de volta",
               "Não recebi o pedido, péssima experiência", "Veio quebrado e ninguém responde"]


def write_olist(folder, n_people=240, seed=0):
    """The seven Olist CSVs, small: a person key per order, payments, items, catalogue, reviews."""
    import csv

    rng = np.random.default_rng(seed)
    rows = {name: [] for name in ("customers", "orders", "items", "payments", "reviews", "products")}
    products = [(f"p{i}", cat) for i, cat in enumerate(["cama_mesa_banho", "beleza_saude", "esporte_lazer",
                                                        "informatica_acessorios"] * 3)]
    rows["products"] = [{"product_id": p, "product_category_name": c} for p, c in products]
    people, order_no = [], 0
    for person in range(n_people):
        unique = f"u{person:04d}"
        people.append(unique)
        unhappy = person % 2 == 0
        for k in range(1 + int(rng.random() < 0.35)):  # some people order twice: two customer rows
            order_no += 1
            order, cust = f"o{order_no:05d}", f"c{order_no:05d}"
            day = np.datetime64("2017-01-01") + int(rng.integers(0, 600))
            rows["customers"].append({"customer_id": cust, "customer_unique_id": unique,
                                      "customer_zip_code_prefix": "01001", "customer_city": "sao paulo",
                                      "customer_state": "SP" if person % 3 else "RJ"})
            rows["orders"].append({"order_id": order, "customer_id": cust, "order_status": "delivered",
                                   "order_purchase_timestamp": f"{day} 10:{k:02d}:00"})
            product = products[int(rng.integers(0, len(products)))][0]
            price = round(float(rng.uniform(20, 300)), 2)
            rows["items"].append({"order_id": order, "order_item_id": 1, "product_id": product, "price": price})
            rows["payments"].append({"order_id": order, "payment_sequential": 1,
                                     "payment_type": "boleto" if unhappy else "credit_card",
                                     "payment_value": price})
            texts = NEGATIVE_PT if unhappy else POSITIVE_PT
            words = person % 5 != 0  # every fifth person reviews with a score only
            rows["reviews"].append({"review_id": f"r{order_no:05d}", "order_id": order,
                                    "review_score": 1 if unhappy else 5,
                                    "review_comment_title": "Ruim" if unhappy and words else "",
                                    "review_comment_message": texts[order_no % 4] if words else "",
                                    "review_creation_date": f"{day + 5} 00:00:00"})
    files = {"customers": "olist_customers_dataset.csv", "orders": "olist_orders_dataset.csv",
             "items": "olist_order_items_dataset.csv", "payments": "olist_order_payments_dataset.csv",
             "reviews": "olist_order_reviews_dataset.csv", "products": "olist_products_dataset.csv"}
    for name, file in files.items():
        with open(folder / file, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[name][0]))
            writer.writeheader()
            writer.writerows(rows[name])
    (folder / "product_category_name_translation.csv").write_text(
        "product_category_name,product_category_name_english\ncama_mesa_banho,bed_bath_table\n"
        "beleza_saude,health_beauty\nesporte_lazer,sports_leisure\ninformatica_acessorios,computers_accessories\n")
    return people, len(rows["customers"])


def test_normalised_shop_database_with_portuguese_reviews(make_cfg, tmp_path):
    from gpuseg.jobs import run

    data = tmp_path / "olist"
    data.mkdir()
    people, n_customer_rows = write_olist(data)
    cfg = make_cfg("run", "data=olist", f"paths.data_dir={data}", "device=cpu", "data.as_of=2018-06-01",
                   "segment.n_clusters=2", "segment.confidence.n_bootstrap=1", "journey.epochs=1",
                   "profile.words.min_df=1")
    run.run(cfg)
    work = tmp_path / "work"
    # one row per person (the per-order customer rows are folded by the duplicate policy)
    _segments_cover(work, people)
    validation = json.loads((work / "validated" / "validation.json").read_text())
    dropped = validation["tables"]["customers"]["rejected"]
    assert sum(dropped.values()) == n_customer_rows - len(people)
    rejects = pq.read_table(work / "validated" / "rejects" / "customers.parquet").to_pandas()
    assert rejects["reason"].str.startswith("duplicate customer: kept the last by seen_at").all()
    # a review with a score and no words keeps its score
    features = pq.read_table(work / "features" / "features.parquet").to_pandas().set_index("customer_id")
    assert features.loc["u0000", "mean_rating"] == 1.0 and features.loc["u0005", "mean_rating"] == 5.0
    texts = json.loads((work / "validated" / "validation.json").read_text())["tables"]["texts"]
    assert texts["dropped_values"]["empty text: text dropped, rating kept"] > 0
    # Portuguese words come out whole, function words do not
    profiles = json.loads((work / "profile" / "profiles.json").read_text())["segments"]
    words = {w for p in profiles for w, _ in p["words"].get("review", [])}
    assert words & {"péssimo", "péssima", "confortável", "ótima", "excelente", "defeito"}
    assert not words & {"ssimo", "confort", "vel", "não", "de", "do", "meu"}
