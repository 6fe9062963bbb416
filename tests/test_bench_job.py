"""``gpuseg bench``: stage-by-stage figures as JSON, the tables, compare mode, sizes, bad settings."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gpuseg.jobs import bench
from gpuseg.runtime.errors import ConfigError, GpusegError

REPO = Path(__file__).resolve().parents[1]
#: small and quick: text (a transformer) and journeys (LSTM training) are left out by the stages list
STAGES = ["generate", "validate", "features", "fuse", "segment", "lookalike"]


def _gpuseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuseg", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    """One bench at 300 customers with the peers (compare mode), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("bench")
    out = _gpuseg("bench", "bench.n_customers=300", f"bench.stages=[{','.join(STAGES)}]", "bench.compare=true",
                  "bench.compare_settings.text_sample=16", "bench.compare_settings.search_queries=50",
                  "bench.compare_settings.search_k=20", f"bench.results_dir={root / 'results'}",
                  f"paths.work_dir={root / 'work'}", "device=cpu", "progress=false",
                  # passed on to the segment stage only (the other stages' configs have no `segment`)
                  "segment.n_clusters=4", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted((root / "results").glob("bench_cpu_300_*.json"))
    assert len(files) == 1
    return root, json.loads(files[0].read_text()), out


def test_json_has_every_stage_with_time_throughput_and_memory(small_bench):
    root, payload, _ = small_bench
    assert [r["stage"] for r in payload["stages"]] == STAGES
    assert payload["n_customers"] == 300 and payload["rows"]["customers"] == 300
    assert payload["rows"]["events"] > 300 and payload["rows"]["texts"] > 0
    for record in payload["stages"]:
        assert record["wall_s"] > 0, record
        assert record["throughput"]["customers_per_s"] == pytest.approx(300 / record["wall_s"])
        # the child's own peak (os.wait4) and the one its manifest recorded at finish(): a process
        # that imported torch and pyarrow holds well over 50 MiB
        assert record["peak_rss_bytes"] > 50 * 2**20, record
        assert 0 < record["peak_rss_bytes_at_finish"] <= record["peak_rss_bytes"] * 1.05
        assert record["cuda_max_allocated_bytes"] is None  # device=cpu: CUDA never initialised
    by_stage = {r["stage"]: r for r in payload["stages"]}
    assert by_stage["features"]["throughput"]["events_per_s"] == pytest.approx(
        payload["rows"]["events"] / by_stage["features"]["wall_s"])
    # the override reached the segment stage
    assert by_stage["segment"]["result"]["n_clusters"] == 4
    assert by_stage["segment"]["result"]["k_chosen_by"] == "config"
    assert payload["total"]["wall_s"] == pytest.approx(sum(r["wall_s"] for r in payload["stages"]))
    assert payload["total"]["peak_rss_bytes"] == max(r["peak_rss_bytes"] for r in payload["stages"])
    assert payload["startup"]["wall_s"] > 0 and payload["startup"]["peak_rss_bytes"] > 0
    assert payload["device"] == "cpu" and payload["machine"]["cpu_count"] >= 1
    assert payload["versions"]["torch"] and "scikit-learn" in payload["versions"]
    assert payload["config"]["segment"]["n_clusters"] == 4
    assert "segment.n_clusters=4" in payload["overrides"]
    assert payload["targets"]["met"] is None  # judged at 1M customers only
    assert payload["failed"] is None
    assert not (root / "work" / "bench" / "n300").exists()  # scratch removed (bench.keep_work=false)


def test_compare_mode_reports_ratios_and_quality(small_bench):
    _, payload, _ = small_bench
    km = payload["compare"]["kmeans"]
    assert km["k"] == 4 and km["n"] == 300
    for peer in ("sklearn_minibatch_kmeans", "faiss_kmeans"):
        p = km[peer]
        assert p["time_ratio"] == pytest.approx(p["wall_s"] / km["gpuseg"]["wall_s"])
        assert 0.5 < p["inertia_ratio"] < 2.0  # the same data and k: inertias of one order
        assert -1.0 <= p["ari_vs_gpuseg"] <= 1.0
    search = payload["compare"]["search"]
    flat = search["faiss_IndexFlatIP"]
    assert search["queries"] == 50 and search["k"] == 20
    assert flat["neighbour_overlap"] > 0.95  # both exact: the same neighbours up to ties
    assert flat["search_time_ratio"] > 0
    text = payload["compare"]["text"]
    if importlib.util.find_spec("sentence_transformers") is None:
        assert "not installed" in text["skipped"]
    else:
        assert text["texts"] == 16
        st = text["sentence_transformers"]
        assert st["time_ratio"] == pytest.approx(st["wall_s"] / text["gpuseg"]["wall_s"])
        assert st["mean_cosine_vs_gpuseg"] > 0.99  # the same model: the same embeddings


def test_table_is_printed_and_rendered_from_the_files(small_bench, capsys):
    root, payload, out = small_bench
    assert "| segment |" in out.stdout and "sklearn_minibatch_kmeans" in out.stdout
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_table
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert bench_table.main([str(root / "results")]) == 0
    table = capsys.readouterr().out
    assert "**300 customers**" in table and "without text, journeys, profile," in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    for stage in STAGES:
        line = next(r for r in rows if r.startswith(f"| {stage} |"))
        wall = float(line.split("|")[2])
        assert wall == pytest.approx(next(r["wall_s"] for r in payload["stages"] if r["stage"] == stage), abs=0.06)
    assert any("faiss_IndexFlatIP" in r for r in rows)


def test_overrides_are_passed_to_the_stages_whose_config_has_the_key():
    overrides = ["text.model=static", "segment.n_clusters=4", "device=cpu", "bench.compare=true",
                 "paths.work_dir=x", "+segment.extra=1", "seed=3", "data.generator.n_customers=9",
                 "journey.epochs=1", "hydra.verbose=true"]
    assert bench.passed_on(overrides, "generate") == ["device=cpu", "seed=3"]
    assert bench.passed_on(overrides, "text") == ["text.model=static", "device=cpu", "seed=3"]
    assert bench.passed_on(overrides, "segment") == ["segment.n_clusters=4", "device=cpu", "+segment.extra=1",
                                                     "seed=3"]
    assert bench.passed_on(overrides, "journeys") == ["device=cpu", "seed=3", "journey.epochs=1"]


def test_scaling_reports_time_and_rss_against_n():
    def payload(n, t, rss):
        return {"n_customers": n, "stages": [{"stage": "features", "wall_s": t, "peak_rss_bytes": rss}]}

    summary = bench.scaling([payload(100, 2.0, 1000), payload(300, 6.0, 2000), payload(1000, 40.0, 5000)])
    f = summary["stages"]["features"]
    assert summary["n_customers"] == [100, 300, 1000]
    assert f["time_vs_linear"] == pytest.approx([1.0, 1.0, 2.0])  # linear, linear, then twice linear
    assert f["rss_bytes_per_customer"][1:] == pytest.approx([5.0, 3000 / 700])
    table = bench.scaling_table(summary)
    assert "| features | 2.0 | 6.0 | 40.0 |" in table and "| 2.00 |" in table


def test_sizes_write_one_file_per_size_and_the_scaling(tmp_path):
    out = _gpuseg("bench", "bench.sizes=[120,60]", "bench.stages=[generate]",
                  f"bench.results_dir={tmp_path / 'results'}", f"paths.work_dir={tmp_path / 'work'}", "device=cpu",
                  "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    names = sorted(p.name.rsplit("_", 1)[0] for p in (tmp_path / "results").glob("bench_*.json"))
    assert names == ["bench_cpu_120", "bench_cpu_60", "bench_cpu_scaling"]
    summary = json.loads(next((tmp_path / "results").glob("bench_cpu_scaling_*.json")).read_text())
    assert summary["scaling"]["n_customers"] == [60, 120]
    entry = summary["scaling"]["stages"]["generate"]
    assert len(entry["wall_s"]) == 2 and all(t > 0 for t in entry["wall_s"])
    assert entry["time_vs_linear"][0] == 1.0 and math.isfinite(entry["time_vs_linear"][1])
    assert all(v > 0 for v in entry["peak_rss_bytes"])
    assert "time vs linear" in out.stdout


def test_a_failing_stage_is_a_clear_error_with_partial_results(make_cfg, tmp_path):
    # segment without features: its own error, quoted from the stage's log
    cfg = make_cfg("bench", "bench.n_customers=50", "bench.stages=[generate,segment]", "device=cpu",
                   f"bench.results_dir={tmp_path / 'results'}")
    with pytest.raises(GpusegError, match="stage segment failed") as info:
        bench.run(cfg)
    assert "gpuseg features" in str(info.value)
    partial = json.loads(next((tmp_path / "results").glob("bench_cpu_50_*.json")).read_text())
    assert [r["stage"] for r in partial["stages"]] == ["generate"]
    assert partial["failed"]["stage"] == "segment"


@pytest.mark.parametrize(("override", "key"), [
    ("bench.n_customers=0", "bench.n_customers"),
    ("bench.n_customers=many", "bench.n_customers"),
    ("bench.sizes=[]", "bench.sizes"),
    ("bench.sizes=[1000,1000]", "bench.sizes"),
    ("bench.stages=[validate,features]", "bench.stages"),
    ("bench.stages=[generate,fuze]", "bench.stages"),
    ("bench.stage_timeout_s=-1", "bench.stage_timeout_s"),
    ("bench.compare=maybe", "bench.compare"),
    ("bench.compare_settings.text_sample=0", "bench.compare_settings.text_sample"),
])
def test_bad_settings_name_their_key(make_cfg, override, key):
    with pytest.raises(ConfigError) as info:
        bench.run(make_cfg("bench", override))
    assert info.value.config_key == key
    assert key in str(info.value)


def test_bad_setting_on_the_command_line_is_exit_2_with_the_key(tmp_path):
    out = _gpuseg("bench", "bench.stages=[generate,fuze]", f"paths.work_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown stage 'fuze' in bench.stages" in out.stderr and "Traceback" not in out.stderr


def test_a_folder_not_made_by_the_bench_is_never_emptied(make_cfg, tmp_path):
    mine = tmp_path / "mine"
    (mine / "n50").mkdir(parents=True)
    (mine / "n50" / "precious.txt").write_text("keep me")
    cfg = make_cfg("bench", "bench.n_customers=50", f"bench.work_dir={mine}", "device=cpu",
                   f"bench.results_dir={tmp_path / 'results'}")
    with pytest.raises(ConfigError, match="not made by gpuseg bench") as info:
        bench.run(cfg)
    assert info.value.config_key == "bench.work_dir"
    assert (mine / "n50" / "precious.txt").read_text() == "keep me"


def test_table_only_without_result_files_names_the_folder(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="no gpuseg bench result files") as info:
        bench.run(make_cfg("bench", "bench.table_only=true", f"bench.results_dir={tmp_path / 'none'}"))
    assert info.value.config_key == "bench.results_dir"
