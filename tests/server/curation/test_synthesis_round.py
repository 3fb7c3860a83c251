"""optidel as a curation method: a federated round selects as feddel does, then each center
synthesizes mosaics from its own selection; the summary reports V-information and counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from flwr.common import serde

from feddel.client.handlers import CenterPaths
from feddel.client.training import training_images
from feddel.common.config import CurationConfig
from feddel.common.curation.local import pvi_edges
from feddel.common.curation.selection import apply_plan, plan_from_histograms, score_histograms
from feddel.common.curation.vobjective import planned_histograms
from feddel.common.io import read_csv
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.mae import MAE, save_mae_checkpoint
from feddel.common.synthesis.mosaic import MOSAIC_MANIFEST, mosaic_dir
from feddel.common.wire.trainproto import TrainRequest
from feddel.simulations.cli import main as sim_main
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

SIZE = 32
ROUND_FLAGS = ["--set", f"image-size={SIZE}", "--set", "k=4", "--set", "k-local=2"]


@pytest.fixture(scope="module")
def optidel_round(tmp_path_factory) -> tuple[Path, Path, Path, list[Message]]:
    root = tmp_path_factory.mktemp("optidel")
    data = root / "data"
    generate_federation(data, centers=3, scale="small", seed=0, size=SIZE)
    weights = save_mae_checkpoint(MAE(EncoderSpec(image_size=SIZE, seed=0)), root / "mae.pt")
    out, state = root / "run", root / "state"
    config = CurationConfig(
        method="optidel", budget=0.3, image_size=SIZE, k=4, k_local=2,
        weights=str(weights), run_name="run",
    )  # fmt: skip
    sent: list[Message] = []
    run_federated(
        data, out, config, engine="inprocess", state_root=state,
        observer=lambda _node, message: sent.append(message),
    )  # fmt: skip
    return data, out, state, sent


def test_optidel_round_makes_mosaics_of_each_centers_own_selection(optidel_round):
    data, out, state, _ = optidel_round
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "optidel"
    made = summary["synthesized"]["per_center"]
    assert summary["synthesized"]["mosaics"] == sum(c["mosaics"] for c in made.values()) > 0
    selection = read_csv(out / "selection.csv")
    for center, counts in made.items():
        chosen = {row["file"] for row in selection if row["center"] == center}
        assert counts["mosaics"] <= len(chosen) // 4
        folder = mosaic_dir(state / center, out.name)
        rows = read_csv(folder / MOSAIC_MANIFEST) if counts["mosaics"] else []
        assert len({row["mosaic"] for row in rows}) == counts["mosaics"]
        for row in rows:  # provenance: a sample this center selected, in its own data folder
            assert row["center"] == center and row["file"] in chosen
            assert (data / center / row["file"]).is_file()
        assert not list((data / center).rglob("mosaic-*.png"))  # never in the data folder


def test_optidel_pretraining_set_is_the_selection_plus_its_mosaics(optidel_round, monkeypatch):
    data, out, state, _ = optidel_round
    monkeypatch.chdir(state.parent)  # folders given relative to the working directory, as in CLIs
    data, state = Path(data.name), Path(state.name)
    summary = json.loads((out / "summary.json").read_text())
    center = max(summary["synthesized"]["per_center"].items(), key=lambda i: i[1]["mosaics"])[0]
    selected = summary["per_center"][center]["selected"]
    request = TrainRequest(
        run="pre", round=0, selection=out.name, uniform_fraction=0.0, model=EncoderSpec().model,
        image_size=SIZE, steps=0, step_offset=0, total_steps=1, batch_size=4, lr=1e-4,
        seed=0,
    )  # fmt: skip
    images = training_images(request, CenterPaths(center, data / center, state / center))
    mosaics = summary["synthesized"]["per_center"][center]["mosaics"]
    assert mosaics > 0 and len(images) == selected + mosaics


def test_summary_reports_the_v_information_the_selection_optimizes(optidel_round):
    _, out, _, _ = optidel_round
    v = json.loads((out / "summary.json").read_text())["v_information"]
    for name in ("candidates", "selection"):
        assert v[name]["objective"] == pytest.approx(v[name]["diversity"] + v[name]["hardness"])
    # the selection keeps each cluster's hardest candidates: harder on average than all of them
    assert v["selection"]["hardness"] > v["candidates"]["hardness"]


def test_synthesis_replies_are_counts_naming_no_sample_or_mosaic(optidel_round):
    _, out, state, sent = optidel_round
    replies = [m for m in sent if m.metadata.message_type == "query.synthesize"]
    assert replies and all(not m.has_error() for m in replies)
    names = [row["file"] for row in read_csv(out / "selection.csv")]
    names += [row["sample_id"] for row in read_csv(out / "selection.csv")]
    names += [p.name for p in state.rglob("mosaic-*.png")]
    for message in replies:
        content = message.content
        assert not content.array_records["arrays"]  # no array of any kind
        assert set(content.config_records["fields"]) == {
            "center", "mosaics", "patches_proposed", "patches_used", "sources_used", "unreadable"
        }  # fmt: skip
        wire = serde.recorddict_to_proto(content).SerializeToString()
        assert not [name for name in names if name.encode() in wire]


def test_optidel_without_an_mae_checkpoint_fails_in_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    generate_federation(data, centers=3, scale="small", seed=0, size=SIZE)
    argv = ["curate", "--data", str(data), "--out", str(tmp_path / "r"), "--method", "optidel",
            "--engine", "inprocess", *ROUND_FLAGS]  # fmt: skip
    assert sim_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights= to a FedDEL MAE checkpoint" in err[0]


def test_planned_histograms_match_what_apply_plan_selects():
    rng = np.random.default_rng(3)
    k, n = 4, 4000
    t = -rng.uniform(0, np.log2(k), n)
    labels = rng.integers(0, k, n)
    edges = pvi_edges(k)
    hist = score_histograms(t, labels, k, edges)
    quotas = (hist.sum(axis=1) * np.array([0.1, 0.3, 0.5, 0.9])).astype(int)
    plans = plan_from_histograms(hist, quotas)
    chosen = apply_plan(t, labels, [str(i) for i in range(n)], edges, plans, seed=0)
    expected = planned_histograms(
        hist,
        np.array([p.threshold_bin for p in plans]),
        np.array([p.boundary_fraction for p in plans]),
    )
    actual = score_histograms(t[chosen], labels[chosen], k, edges)
    assert np.abs(expected.sum(axis=1) - actual.sum(axis=1)).max() <= 0.5
    assert np.abs(expected - actual).max() <= 0.5  # only the boundary bin is rounded
