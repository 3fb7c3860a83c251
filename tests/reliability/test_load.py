"""Load: a 100-center round and ten concurrent rounds leak no memory, threads or file handles.

The 100 tiny centers (six 16 px images each) come with their embedding caches filled (seeded
unit vectors around four modes), so the rounds measure the federation machinery (scans, the
in-process grid, secure sums over 100 keys, state files, memory-mapped caches) and not the
encoder. The ten concurrent rounds share one state folder whose caches start empty, so their
centers build encoders and embed on many threads at once; every run must still select exactly
what one run alone selects from embeddings made alone.
"""

import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddel.common.config import CurationConfig
from feddel.common.data.scan import scan_center
from feddel.common.io import read_csv
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.embedcache import EmbeddingCache, embed_center
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.reports.summary import RoundSummary
from feddel.simulations.federated import run_federated

DIM = 192  # vit_tiny's width: the caches look like the real encoder's
SMALL = PrivacyPolicy(min_members=3)  # centers of 6 and 12 images: their floor allows cells of 3


def _usage() -> tuple[int, int, int]:
    """(open file descriptors, resident MiB, live threads) of this process, after a collection."""
    gc.collect()
    with open("/proc/self/status") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return len(os.listdir("/proc/self/fd")), rss_kib // 1024, threading.active_count()


def _settled(baseline_threads: int, timeout: float = 10.0) -> tuple[int, int, int]:
    """Usage once the grid's worker threads (shut down without waiting) have exited."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > baseline_threads and time.monotonic() < deadline:
        time.sleep(0.05)
    return _usage()


def _write_images(folder: Path, count: int, size: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        coarse = rng.integers(40, 216, (4, 4, 3), dtype=np.uint8)  # smooth: not a noise frame
        Image.fromarray(coarse).resize((size, size), Image.BILINEAR).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def hundred_centers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(0)
    modes = rng.normal(size=(4, DIM))
    spec = EncoderSpec(image_size=16)
    for center in range(100):
        folder = root / "data" / f"center-{center:03d}"
        _write_images(folder, 6, 16, rng)
        ids = [sample.sample_id for sample in scan_center(folder, workers=1).samples]
        X = modes[rng.integers(4, size=len(ids))] + 0.3 * rng.normal(size=(len(ids), DIM))
        cache = EmbeddingCache(root / "state" / folder.name, spec)
        layout = cache.prepare(ids, DIM)
        rows = cache.open_rows(writable=True)
        rows[:] = X / np.linalg.norm(X, axis=1, keepdims=True)
        rows.flush()
        del rows
        cache.mark_done(layout._replace(done=np.ones(len(ids), dtype=bool)))
    return root


@pytest.fixture(autouse=True)
def _no_reports(monkeypatch):
    """Contact sheets and plots take most of a small round's time and are tested elsewhere."""
    monkeypatch.setattr("feddel.client.handlers.write_center_report", lambda *args: None)
    monkeypatch.setattr("feddel.server.report.write_coordinator_report", lambda *args: None)


def test_hundred_center_round_leaks_no_memory_threads_or_file_handles(hundred_centers):
    config = CurationConfig(
        image_size=16, k=4, k_local=2, min_count=3, budget=0.3, kmeans_max_rounds=1
    )

    def run(name: str) -> RoundSummary:
        return run_federated(
            hundred_centers / "data", hundred_centers / "runs" / name, config,
            engine="inprocess", state_root=hundred_centers / "state", policy=SMALL,
        )  # fmt: skip

    first = run("warm-up")  # imports, thread pools and allocator arenas settle here
    assert first.centers == 100 and first.failed_centers == []
    assert first.total_samples == 600 and first.selected > 0
    fds, rss, threads = _usage()
    assert run("again").selected == first.selected
    fds_after, rss_after, threads_after = _settled(threads)
    assert fds_after <= fds, f"file descriptors {fds} -> {fds_after}"
    assert threads_after <= threads, f"threads {threads} -> {threads_after}"
    assert rss_after - rss < 40, f"resident memory {rss} -> {rss_after} MiB"


def _selection(run: Path) -> list[tuple[str, ...]]:
    return sorted(tuple(row.values()) for row in read_csv(run / "selection.csv"))


def test_ten_concurrent_rounds_select_the_same_and_leak_nothing(tmp_path):
    """Cold caches shared by ten runs on 10 x 4 threads: embeddings and selections must equal
    those of a lone process; the RNG-seeded encoder must not depend on thread timing."""
    rng = np.random.default_rng(1)
    for center in range(4):
        _write_images(tmp_path / "data" / f"center-{center}", 12, 16, rng)
    config = CurationConfig(image_size=16, k=3, k_local=2, min_count=3, budget=0.2)
    for center in range(4):  # the same centers: the same secret that keys their noise
        for root in ("state", "warm-up-state"):
            (tmp_path / root / f"center-{center}").mkdir(parents=True)
            (tmp_path / root / f"center-{center}" / "noise.key").write_bytes(bytes([center]) * 32)

    def run(name: str) -> RoundSummary:
        return run_federated(
            tmp_path / "data", tmp_path / "runs" / name, config, engine="inprocess",
            state_root=tmp_path / "state", policy=SMALL,
        )  # fmt: skip

    warm = run_federated(  # torch's first forward and pools settle here, on other caches
        tmp_path / "data", tmp_path / "runs" / "warm-up", config, engine="inprocess",
        state_root=tmp_path / "warm-up-state", policy=SMALL,
    )  # fmt: skip
    fds, rss, threads = _usage()
    with ThreadPoolExecutor(10) as pool:
        summaries = list(pool.map(run, [f"run-{i}" for i in range(10)]))
    assert all(summary.failed_centers == [] for summary in summaries)
    selections = {tuple(_selection(tmp_path / "runs" / f"run-{i}")) for i in range(10)}
    assert selections == {tuple(_selection(tmp_path / "runs" / "warm-up"))}
    assert summaries[0].selected == warm.selected > 0
    spec = EncoderSpec(image_size=16)
    for center in range(4):  # the shared caches hold what one thread alone computes
        folder = tmp_path / "data" / f"center-{center}"
        samples = scan_center(folder, workers=1).samples
        alone = embed_center(samples, folder, spec, tmp_path / "alone" / folder.name)
        shared = EmbeddingCache(tmp_path / "state" / folder.name, spec).read()
        assert shared.ids == alone.ids
        np.testing.assert_array_equal(shared.embeddings, alone.embeddings)
        del alone, shared  # a live memory map holds a file descriptor
    fds_after, rss_after, threads_after = _settled(threads)
    assert fds_after <= fds, f"file descriptors {fds} -> {fds_after}"
    assert threads_after <= threads, f"threads {threads} -> {threads_after}"
    assert rss_after - rss < 100, f"resident memory {rss} -> {rss_after} MiB"
