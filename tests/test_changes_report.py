"""The "Changes since ..." pages: assign's ``changes.html`` and the profile report's matching section."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_assign_job as assign_tests
from conftest import headless_chromium

from gpuseg.jobs import assign, profile, segment
from gpuseg.report import changes
from gpuseg.report.changes import SECTION_IDS, profile_names, render_changes
from gpuseg.report.html import CHANGES_ID, render_report

# the assign tests' small trained project (400 customers, 5 segments) and its private copies
trained, project = assign_tests.trained, assign_tests.project
_cfg, _later_snapshot = assign_tests._cfg, assign_tests._later_snapshot

EVIL = "<script>alert(1)</script>"
QUOTED = 'Loyal & "quoted" <u>'


class _Page(HTMLParser):
    """Section ids, tags, all text, and each table (by id) as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.ids, self.tags, self.text, self.tables = set(), [], [], {}
        self.table = self.row = self.cell = None
        self.headings = []
        self._h = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self.table = self.tables.setdefault(attrs.get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self.table is not None:
            self.row = []
            self.table.append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []
            self.row.append(self.cell)
        elif tag in ("h1", "h2"):
            self._h = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None
        elif tag in ("td", "th"):
            self.cell = None
        elif tag in ("h1", "h2") and self._h is not None:
            self.headings.append("".join(self._h))
            self._h = None

    def handle_data(self, data):
        self.text.append(data)
        if self.cell is not None:
            self.cell.append(data.strip())
        if self._h is not None:
            self._h.append(data)

    def rows(self, table_id):
        """The body rows of a table, each a list of cell texts (parts joined by a space)."""
        return [[" ".join(p for p in cell if p) for cell in row] for row in self.tables[table_id][1:]]


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _label(seg, names) -> str:
    if seg is None:
        return "New customers"
    return f"{seg}: {names[seg]}" if seg in names else f"Segment {seg}"


def _check_page(html: str, out: Path, names: dict[int, str], since: str) -> _Page:
    """The page lists the run's transitions, drifted features, shares and refit reasons, escaped."""
    page = _parse(html)
    assert set(SECTION_IDS) <= page.ids
    assert page.headings[0] == f"Changes since {since}"
    assert "script" not in page.tags and "<script" not in html and "<u>" not in html
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<img" not in html
    trans = pq.read_table(out / "transitions.parquet").to_pylist()
    drift = json.loads((out / "drift.json").read_text())
    k = len(drift["segment_share"])

    # the matrix: one row per previous segment (plus new customers), counts and row shares as in the table
    counts = {}
    for t in trans:
        counts[(t["from"], t["to"])] = counts.get((t["from"], t["to"]), 0) + t["count"]
    rows = {r[0]: r[1:] for r in page.rows("transition-matrix")}
    froms = list(range(k)) + ([None] if any(f is None for f, _ in counts) else [])
    assert list(rows) == [_label(f, names) for f in froms]
    header = [" ".join(p for p in c if p) for c in page.tables["transition-matrix"][0]]
    assert header[1:-1] == [_label(t, names) for t in range(k)]
    for f in froms:
        total = sum(c for (ff, _), c in counts.items() if ff == f)
        assert rows[_label(f, names)][-1] == f"{total:,}"
        for t in range(k):
            c = counts.get((f, t), 0)
            assert rows[_label(f, names)][t] == (f"{c:,} {100 * c / total:.1f}%" if c else "·"), (f, t)
    moves = sorted(((c, f, t) for (f, t), c in counts.items() if f is not None and f != t),
                   key=lambda m: (-m[0], m[1], m[2]))[:10]
    assert page.rows("largest-moves") == [[_label(f, names), _label(t, names), f"{c:,}",
                                           f"{100 * c / sum(v for (ff, _), v in counts.items() if ff == f):.1f}%"]
                                          for c, f, t in moves]

    # drifted features: PSI, threshold and flag as in drift.json, largest first
    listed = page.rows("drift-table")
    limit = drift["thresholds"]["psi"]
    ranked = sorted(drift["psi"].items(), key=lambda kv: (-kv[1], kv[0]))
    assert len(listed) == max(20, sum(v > limit for v in drift["psi"].values()))
    for (feature, value), row in zip(ranked, listed, strict=False):
        assert row[1:] == [feature, f"{value:.3f}", f"{limit:g}", "drifted" if value > limit else "ok"]
    # shares, confidence and the recommendation with its reasons
    shares = page.rows("shares-table")
    for s, row in zip(drift["segment_share"], shares, strict=True):
        assert row[:4] == [_label(s["segment"], names), f"{100 * s['train_share']:.1f}%",
                           f"{100 * s['share']:.1f}%", f"{100 * s['shift']:+.1f} pts"]
    stability = {r[0]: r for r in page.rows("stability-table")}
    assert stability["Mean confidence"][1:3] == [f"{drift['mean_confidence']['train']:.3f}",
                                                 f"{drift['mean_confidence']['now']:.3f}"]
    assert stability["Outlier share"][2] == f"{100 * drift['outlier_share']['now']:.1f}%"
    text = "".join(page.text)
    assert ("Refit recommended." in text) == drift["refit_recommended"]
    for reason in drift["reasons"]:
        assert reason in text
    assert f"{drift['n_changed']:,} customers changed segment" in text or drift["n_changed"] == 0
    # the hostile names reached the page as text
    for name in names.values():
        assert name in text
    return page


def _write_profiles(work: Path, names: dict[int, str], k: int) -> None:
    folder = work / "profile"
    folder.mkdir(exist_ok=True)
    (folder / "profiles.json").write_text(json.dumps(
        {"as_of": "2025-01-01", "n_segments": k, "segments": [{"segment": s, "name": n} for s, n in names.items()]}))


def test_assign_writes_the_changes_page(project, tmp_path):
    names = {0: EVIL, 2: QUOTED}
    _write_profiles(project, names, 5)
    inbox = _later_snapshot(project)
    result = assign.run(_cfg(project, "assign", "data.as_of=2025-02-15", f"assign.input={inbox}", "assign.margin=0",
                             "assign.confirm_runs=null"))
    out = Path(result["output_dir"])
    page_path = out / "changes.html"
    assert result["changes_path"] == str(page_path) and assign.RUN_FILES["changes"] == "changes.html"
    # published with the run's other outputs
    assert "2025-02-15/changes.html" in json.loads((project / "assign" / ".publish.json").read_text())["files"]
    html = page_path.read_text(encoding="utf-8")
    page = _check_page(html, out, names, since="2025-01-01")  # training as_of
    assert "compared with the training segments of 2025-01-01" in html
    assert result["n_changed"] > 0 and result["n_new_customers"] == 15
    movers = pq.read_table(out / "movers.parquet").to_pylist()
    listed = page.rows("movers-table")
    assert len(listed) == min(20, len(movers))
    by_id = {m["customer_id"]: m for m in movers}
    largest = sorted((max(abs(z) for z in m["moves_z"]) for m in movers), reverse=True)[:len(listed)]
    for row, want in zip(listed, largest, strict=True):
        m = by_id[row[0]]
        assert row[1:3] == [_label(m["from"], names), _label(m["to"], names)]
        assert f"{m['moves_z'][0]:+.2f} sd" in row[3] and max(abs(z) for z in m["moves_z"]) == want
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "Loyal &amp; &#34;quoted&#34; &lt;u&gt;" in html

    # the next run compares with this one; without a profile the segments are numbered
    shutil.rmtree(project / "profile")
    later = assign.run(_cfg(project, "assign", "data.as_of=2025-03-20", f"assign.input={inbox}"))
    later_out = Path(later["output_dir"])
    later_html = (later_out / "changes.html").read_text(encoding="utf-8")
    _check_page(later_html, later_out, {}, since="2025-02-15")
    assert "compared with the assign run of 2025-02-15" in later_html and "Segment 0" in later_html

    # the same run again gives the same page, byte for byte
    again = assign.run(_cfg(project, "assign", "data.as_of=2025-03-20", f"assign.input={inbox}"))
    assert (Path(again["output_dir"]) / "changes.html").read_text(encoding="utf-8") == later_html


def test_a_failing_page_publishes_nothing(project, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("page failed")

    monkeypatch.setattr(assign, "render_changes", broken)
    with pytest.raises(RuntimeError, match="page failed"):
        assign.run(_cfg(project, "assign"))
    assert not (project / "assign").exists()


def test_a_profile_made_from_an_earlier_segment_run_is_not_used(project, caplog):
    _write_profiles(project, {0: "Old name"}, 5)
    size = (project / "profile" / "profiles.json").stat().st_size
    (project / "profile" / ".publish.json").write_text(json.dumps(
        {"job": "profile", "id": "p1", "files": {"profiles.json": size},
         "lineage": {"segment": {"folder": "segment", "id": "an-earlier-segment-run"}}}))
    result = assign.run(_cfg(project, "assign"))
    html = Path(result["changes_path"]).read_text(encoding="utf-8")
    assert "Old name" not in html and "Segment 0" in html
    assert "not read from the profile" in caplog.text and "gpuseg segment" in caplog.text


def test_a_stale_or_foreign_profile_leaves_segments_numbered():
    assert profile_names({"n_segments": 3, "segments": [{"segment": 0, "name": "A"}]}, 5) == {}
    assert profile_names({"n_segments": 2, "segments": [{"segment": 0, "name": "A"}, {"segment": 7, "name": "B"},
                                                        "junk"]}, 2) == {0: "A"}
    assert profile_names(None, 2) == {} and profile_names({"n_segments": 2, "segments": "x"}, 2) == {}


def _tiny_run(k: int = 30, new: int = 3) -> tuple[pa.Table, pa.Table, dict]:
    frm = [*range(k), *range(k), None]
    to = [*range(k), *[(s + 1) % k for s in range(k)], 0]
    count = [10] * k + [s + 1 for s in range(k)] + [new]
    trans = pa.table({"from": pa.array(frm, pa.int32()), "to": pa.array(to, pa.int32()),
                      "count": pa.array(count, pa.int64())})
    movers = pa.table({"customer_id": [f"c{i}" for i in range(3)], "from": pa.array([0, 1, 2], pa.int32()),
                       "to": pa.array([1, 2, 3], pa.int32()),
                       "features": [["recency_days", "n_events"], [], [EVIL]],
                       "moves_z": pa.array([[1.5, -0.2], [], [-3.0]], pa.list_(pa.float64()))})
    drift = {"as_of": "2025-02-15", "previous": {"source": "segment", "as_of": None}, "n_customers": 10,
             "segment_share": [{"segment": s, "train_share": 1 / k, "share": 1 / k, "shift": 0.0} for s in range(k)],
             "psi": {"a": 0.5, "b": 0.1}, "thresholds": {"psi": None, "share_shift": None},
             "mean_confidence": {"train": 0.9, "now": 0.8, "drop": 0.1}, "outlier_share": {}, "reasons": []}
    return trans, movers, drift


def test_many_segments_list_the_largest_moves_and_no_threshold_flags_nothing():
    trans, movers, drift = _tiny_run()
    page = _parse(render_changes(trans, movers, drift, previous_as_of="2025-01-01"))
    assert "transition-matrix" not in page.tables and "Too many segments" in "".join(page.text)
    assert 30 > changes.MAX_MATRIX
    # s -> s + 1 by s + 1 customers (of 10 + s + 1 in the row): the largest first, ten of them
    largest = page.rows("largest-moves")
    assert largest[0] == ["Segment 29", "Segment 0", "30", f"{100 * 30 / 40:.1f}%"]
    assert len(largest) == 10 and largest[-1][:3] == ["Segment 20", "Segment 21", "21"]
    assert [r[-1] for r in page.rows("drift-table")] == ["ok", "ok"]
    # movers ordered by their largest move; the hostile feature name is text
    assert [r[0] for r in page.rows("movers-table")] == ["c2", "c0", "c1"]
    assert "<script" not in render_changes(trans, movers, drift, previous_as_of=EVIL)
    assert "No refit needed" in "".join(page.text)


def _matching_context(with_matching: bool) -> dict:
    segs = [{"segment": s, "name": [EVIL, "Steady", "Newcomers <i>"][s], "size": 10, "share": 1 / 3}
            for s in range(3)]
    ctx = {"segments": segs}
    if with_matching:
        ctx["matching"] = {"previous": f"/runs/{EVIL}/segment", "previous_n_clusters": 4, "max_distance": 1.25,
                           "spread": 2.0,
                           "matched": [{"segment": 0, "previous_segment": 0, "distance": 0.5},
                                       {"segment": 1, "previous_segment": 3, "distance": 0.75}],
                           "births": [2], "deaths": [1, 2], "renumbered": {"3": 1}}
    return ctx


def test_the_profile_report_says_what_changed_since_the_previous_segmentation():
    html = render_report(_matching_context(True))
    page = _parse(html)
    assert CHANGES_ID in page.ids and 'href="#changes"' in html
    assert "Changes since the previous segmentation" in page.headings
    assert page.rows("changes-matched") == [["0", "0", EVIL, "0.5", "0.25"],
                                            ["1", "3 (renumbered)", "Steady", "0.75", "0.38"]]
    text = "".join(page.text)
    assert "1 of 3 segments kept their id, 1 were renumbered, 1 are new and 2 disappeared" in " ".join(text.split())
    assert "2: Newcomers <i>" in text and "(deaths): 1, 2." in text and f"/runs/{EVIL}/segment" in text
    assert "<script" not in html and "<i>" not in html
    # without matching the section is absent, not empty
    plain = render_report(_matching_context(False))
    assert 'id="changes"' not in plain and "Changes since" not in plain and 'href="#changes"' not in plain


def test_profile_job_passes_the_matching_to_the_report(project):
    first = project.parent / "first"
    shutil.copytree(project, first, symlinks=True)
    segment.run(_cfg(project, "segment", "segment.n_clusters=6", "segment.confidence.n_bootstrap=1", "seed=3",
                     f"segment.previous={first}"))
    matching = json.loads((project / "segment" / "segmentation.json").read_text())["matching"]
    profile.run(_cfg(project, "profile", "profile.churn.epochs=2"))
    page = _parse((project / "profile" / "report.html").read_text(encoding="utf-8"))
    assert CHANGES_ID in page.ids
    assert matching["births"], "6 centres matched to 5 leave at least one birth"
    matched = page.rows("changes-matched")
    assert [int(r[0]) for r in matched] == [m["segment"] for m in matched_in_order(matching)]
    for row, m in zip(matched, matched_in_order(matching), strict=True):  # the centre shift, 3 digits
        assert int(row[1].split()[0]) == m["previous_segment"]
        assert float(row[3]) == pytest.approx(m["distance"], rel=5e-3)
    births = " ".join(page.text).split("(births):")[1].split(".")[0]
    for b in matching["births"]:
        assert f"{b}: " in births


def matched_in_order(matching: dict) -> list[dict]:
    """Kept ids first, then renumbered ones, as the report lists them."""
    kept = [m for m in matching["matched"] if m["segment"] == m["previous_segment"]]
    return kept + [m for m in matching["matched"] if m["segment"] != m["previous_segment"]]


def test_the_assign_page_renders_in_headless_chromium(project, tmp_path):
    _write_profiles(project, {0: EVIL, 1: QUOTED}, 5)
    result = assign.run(_cfg(project, "assign", "data.as_of=2025-02-15", "assign.margin=0"))
    page = Path(result["changes_path"])
    dom, page_lines = headless_chromium(tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom.stdout
    assert "<script" not in dom.stdout and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
    assert page_lines == []
