"""The benchmark suite at tiny sizes: record schema, same-run ratios, bytes independent of N.

Nothing here asserts a speed: timings on a shared machine are noise. What must hold whatever
the machine: every record has the issue's fields, a ratio is its own two measurements divided,
and a center's Lloyd reply has the same size whatever its number of samples.
"""

import json
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from feddel.common.errors import ConfigError
from feddel.common.wire.protocol import LloydReply, record_bytes
from feddel.simulations.benchmarks import center_scoring, federated_kmeans
from feddel.simulations.benchmarks.embedding import (
    SOURCES,
    Case,
    SizeResult,
    to_records,
    write_images,
)
from feddel.simulations.benchmarks.records import Target, growth_exponent, markdown, ratio, record
from feddel.simulations.benchmarks.suite import parse_only
from feddel.simulations.benchmarks.synthetic import Datasets, center_sizes, write_synthetic
from feddel.simulations.cli import main

ISSUE_FIELDS = {"name", "value", "unit", "target", "met"}


def _check_schema(rows):
    for row in rows:
        assert set(row) >= ISSUE_FIELDS, row
        assert isinstance(row["name"], str) and row["name"]
        assert isinstance(row["value"], float) and math.isfinite(row["value"])
        assert (row["target"] is None) == (row["met"] is None), row


def test_record_met_follows_target_and_ratio_keeps_both_sides():
    ok = record(3, "t", 59.0, "s", Target("<=", 60.0))
    missed = ratio(4, "r", 3.0, 2.0, Target("<=", 1.5))
    plain = record(1, "p", 7.0, "img/s")
    assert (ok.met, ok.target) == (True, "<= 60")
    assert (missed.value, missed.measured, missed.reference, missed.met) == (1.5, 3.0, 2.0, True)
    assert ratio(4, "r", 3.1, 2.0, Target("<=", 1.5)).met is False
    assert Target("==", 0.0).met(0.0) and not Target(">=", 0.85).met(0.84)
    rows = [r.to_json() for r in (ok, missed, plain)]
    _check_schema(rows)
    assert "measured" not in rows[0] and rows[2]["met"] is None


def test_growth_exponent_recovers_a_power_law_and_rejects_one_size():
    sizes = [31, 98, 310]
    assert growth_exponent(sizes, [3.0 * s**1.5 for s in sizes]) == pytest.approx(1.5)
    assert growth_exponent([10, 1000], [5.0, 5.0]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="two different sizes"):
        growth_exponent([10, 10], [1.0, 2.0])


def test_center_sizes_are_heavy_tailed_and_sum_to_n():
    sizes = center_sizes(100_000, 31, np.random.default_rng(0))
    assert sizes.sum() == 100_000 and sizes.min() >= 20
    assert sizes.max() / sizes.min() > 10


def test_synthetic_rows_are_unit_and_videos_are_near_duplicates(tmp_path):
    data = write_synthetic(tmp_path / "x.npy", 2_000, 32, 4, seed=1)
    X = data.open()
    assert X.shape == (2_000, 32) and data.offsets[-1] == 2_000
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    neighbours = np.einsum("ij,ij->i", X[1:], X[:-1])  # mostly frames of one video
    assert np.median(neighbours) > 0.9
    again = write_synthetic(tmp_path / "y.npy", 2_000, 32, 4, seed=1)
    assert np.array_equal(X, again.open())  # same seed, same rows


def test_lloyd_reply_bytes_do_not_depend_on_the_number_of_samples(tmp_path):
    """Reply size for centers of 20 to ~1,000 samples, at two N, equals one formula."""
    params = federated_kmeans.QUICK
    k, d = 4, params.d
    sizes = []
    for n in (400, 1_600):
        data = write_synthetic(tmp_path / f"n{n}.npy", n, d, params.centers, seed=0)
        X = data.open()
        shards = [X[lo:hi] for lo, hi in pairwise(data.offsets)]
        run = federated_kmeans.federated_kmeans(shards, k, params, np.random.default_rng(0))
        sizes += run.reply_bytes
    words = np.zeros(k * (d + 1), dtype=np.uint32)  # counts and sums of k cells
    expected = record_bytes(LloydReply(masked=words).to_record())
    assert set(sizes) == {expected}
    assert 4 * k * (d + 1) < expected < 4 * k * (d + 1) + 200  # 32-bit words plus framing


def test_kmeans_ratios_are_against_the_same_runs_reference(tmp_path):
    records = federated_kmeans.run(federated_kmeans.QUICK, Datasets(tmp_path), lambda _: None)
    _check_schema([r.to_json() for r in records])
    by_name = {r.name: r for r in records}
    for n, k in federated_kmeans.QUICK.runs:
        wall = by_name[f"kmeans_wall_ratio_n{n}_k{k}"]
        parallel = by_name[f"kmeans_wall_ratio_parallel_n{n}_k{k}"]
        inertia = by_name[f"kmeans_inertia_ratio_n{n}_k{k}"]
        for r in (wall, parallel, inertia):
            assert r.value == pytest.approx(r.measured / r.reference)
        assert wall.reference == parallel.reference  # one centralized run per (N, k)
        assert wall.reference == pytest.approx(wall.params["central_s"], abs=0.01)
        assert wall.measured == pytest.approx(wall.params["federated_s"], abs=0.01)
        assert parallel.measured <= wall.measured
        assert inertia.reference > 0 and inertia.target == "<= 1.02"
    k = federated_kmeans.QUICK.runs[0][1]
    size = by_name[f"kmeans_reply_bytes_per_center_round_k{k}"]
    assert size.met is True  # 4-byte words: under the issue's 4 k (d + 2), plus framing
    assert size.params["framing_bytes"] == size.value - 4 * k * (federated_kmeans.QUICK.d + 1)
    assert size.params["uint64_reply_bytes"] - size.value == 4 * size.params["values"]
    assert size.params["largest_reply_values"] == size.params["values"]  # every cell open
    assert by_name[f"kmeans_reply_bytes_spread_k{k}"].value == 0.0


def test_center_scoring_child_reports_time_memory_and_selection(tmp_path):
    params = center_scoring.QUICK
    records = center_scoring.run(params, Datasets(tmp_path), lambda _: None)
    by_name = {r.name: r for r in records}
    _check_schema([r.to_json() for r in records])
    assert by_name["center_score_select_s"].met is True
    peak, anon = by_name["center_peak_rss_gb"].value, by_name["center_peak_anon_gb"].value
    assert 0 < anon <= peak < 4.0
    info = by_name["center_score_select_s"].params
    assert info["selected"] == math.ceil(params.budget * params.n)
    assert info["candidates"] + info["duplicates"] <= params.n


def test_embedding_records_divide_pipeline_by_the_bare_forward_of_the_same_run():
    case = Case("vit_tiny_patch16_224", 224, "png512")
    result = SizeResult(case, 64, 2, 50.0, 40.0, 10.0, 30.0, 0.8, "float32")
    records = {r.name: r for r in to_records(result, torch.device("cpu"))}
    over_bare = records["embed_pipeline_over_bare_vit_tiny16_224px_png512"]
    assert (over_bare.value, over_bare.met) == (pytest.approx(0.8), False)
    assert (over_bare.measured, over_bare.reference) == (40.0, 50.0)
    assert over_bare.params["source"] == SOURCES["png512"][3]
    assert records["embed_pipeline_over_naive_vit_tiny16_224px_png512"].value == pytest.approx(4.0)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_embedding_sources_are_written_in_their_format_and_size(tmp_path, source):
    width, height, kind, _ = SOURCES[source]
    paths = write_images(tmp_path, 2, source)
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.size, image.mode) == (kind, (width, height), "RGB")


def test_parse_only_names_benchmarks():
    assert parse_only("3,1,3") == (1, 3)
    with pytest.raises(ConfigError, match="benchmark numbers from 1-5"):
        parse_only("6")


def test_bench_command_writes_json_records_and_markdown_table(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--only", "5", "--out", str(out)]) == 0
    rows = json.loads((out / "bench.json").read_text())
    _check_schema(rows)
    names = {row["name"] for row in rows}
    wanted = {"machine", "suite_s", "scale_time_exponent_centers", "scale_bytes_exponent_samples"}
    assert wanted <= names
    machine_row = next(row for row in rows if row["name"] == "machine")
    assert machine_row["params"]["cpus"] >= 1 and "torch" in machine_row["params"]
    table = (out / "bench.md").read_text()
    assert "| # | measure | value | unit | target | met |" in table
    assert "Machine:" in table and "scale_bytes_exponent_centers" in table
    assert not (out / "work").exists()  # large work files are removed


def test_markdown_marks_missed_targets():
    rows = [ratio(4, "e2e_overhead_ray", 3.0, 1.0, Target("<=", 1.5), note="why")]
    info = {"cpus": 2, "cpu_model": "x", "memory_gb": 1, "gpu": None, "python": "3", "numpy": "2",
            "torch": "2", "torch_threads": 2, "load_average": [0.0, 0.0, 0.0]}  # fmt: skip
    text = markdown(rows, info, 60.0)
    assert "| 4 | e2e_overhead_ray | 3 | ratio | <= 1.5 | **no** |" in text
    assert "- `e2e_overhead_ray`: why" in text


@pytest.mark.slow
def test_bench_quick_embedding_and_end_to_end_record_their_ratios(tmp_path):
    """Slow (~1-2 min): builds a ViT, writes 720x576 JPEGs, generates a 3-center federation and
    embeds it once before timing the centralized and the in-process federated rounds."""
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--only", "1,4", "--out", str(out)]) == 0
    rows = {row["name"]: row for row in json.loads((out / "bench.json").read_text())}
    _check_schema(rows.values())
    over_bare = rows["embed_pipeline_over_bare_vit_tiny16_32px_jpeg720"]
    assert over_bare["value"] == pytest.approx(over_bare["measured"] / over_bare["reference"])
    assert over_bare["measured"] == rows["embed_pipeline_vit_tiny16_32px_jpeg720"]["value"]
    overhead = rows["e2e_overhead_inprocess"]
    assert overhead["reference"] == pytest.approx(rows["e2e_centralized_s"]["value"])
    assert overhead["params"]["selected"] > 0
    phases = {
        name.removeprefix("e2e_inprocess_phase_").removesuffix("_s"): row["value"]
        for name, row in rows.items()
        if name.startswith("e2e_inprocess_phase_")
    }
    assert {"inventory", "counts", "lloyd", "select"} <= set(phases)
    assert phases == pytest.approx(overhead["params"]["phase_seconds"], abs=0.01)
    outside = rows["e2e_inprocess_outside_round_s"]["value"]
    whole = rows["e2e_federated_inprocess_s"]["value"]
    assert sum(phases.values()) + outside <= whole + 0.05  # the phases are parts of the run


# --- the GPU check (`feddel-sim bench --gpu`) ----------------------------------------------------


def test_gpu_check_without_a_gpu_says_why_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--gpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["skipped"] == f"no CUDA device visible to torch {torch.__version__}"
    assert result["machine"]["cpus"] >= 1
    assert "GPU check skipped: no CUDA device" in (tmp_path / "gpu-check.md").read_text()
    assert "GPU check skipped" in capsys.readouterr().out
    assert not (tmp_path / "cell").exists()  # nothing ran


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_quick_measures_embedding_and_a_demo_cell_on_the_gpu(tmp_path):
    assert main(["bench", "--gpu", "--quick", "--out", str(tmp_path)]) == 0
    records = {
        r["name"]: r for r in json.loads((tmp_path / "gpu-check.json").read_text())["records"]
    }
    assert any(name.startswith("embed_pipeline_over_bare_vit_base") for name in records)
    assert 0.0 < records["demo_cell_feddel_miou"]["value"] <= 1.0
    embedded = [r for name, r in records.items() if name.startswith("embed_")]
    assert embedded and all(r["params"]["device"].startswith("cuda") for r in embedded)
