"""A federation of synthetic embeddings driven through the real apps, without any image.

Each center's state folder gets what its inventory phase would have left there: the embedding
cache (common/models/embedcache.py layout, the center's block of rows) and the run's pool (one
sample per
row, none disruptive). The ClientApp is FedDEL's (`client/app.py.PHASES`), except that its inventory
handler reports that stored pool instead of scanning and embedding images; every other phase
(keys, seed, Lloyd, score, select) is the real handler, over the in-process engine, so secure
aggregation, serialization and the coordinator's ServerApp are all measured.
"""

from __future__ import annotations

import dataclasses
import logging
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from feddel.client.app import PHASES
from feddel.client.handlers import CenterPaths
from feddel.client.state import CenterState
from feddel.common.config import CurationConfig
from feddel.common.data.pool import CenterPool, PoolCounts
from feddel.common.data.scan import Sample
from feddel.common.models.embed import EncoderSpec, encoder_fingerprint
from feddel.common.models.embedcache import EmbeddingCache
from feddel.common.reports.summary import RoundSummary
from feddel.common.wire.protocol import InventoryReply, InventoryRequest, Payload
from feddel.server.app import build_server_app
from feddel.simulations.benchmarks.synthetic import SyntheticSet
from feddel.simulations.inprocess import InProcessGrid

MODEL = {384: "vit_small_patch16_224", 192: "vit_tiny_patch16_224"}  # named by dimension
IMAGE_SIZE = 16  # the spec's image size: only the fingerprint and the mean-image shape use it
_COPY = 65536


def encoder_for(d: int, seed: int) -> EncoderSpec:
    """A spec whose fingerprint the centers share; no encoder is ever built from it."""
    return EncoderSpec(MODEL.get(d, "vit_small_patch16_224"), image_size=IMAGE_SIZE, seed=seed)


def center_name(index: int) -> str:
    return f"center-{index:03d}"


def write_states(data: SyntheticSet, root: Path, spec: EncoderSpec, run: str) -> list[str]:
    """One state folder per center under `root`, holding its rows and its pool for `run`."""
    X = data.open()
    names = []
    for index, (lo, hi) in enumerate(pairwise(data.offsets)):
        name = center_name(index)
        ids = [f"{index:04x}{row:012x}" for row in range(hi - lo)]
        cache = EmbeddingCache(root / name, spec)
        layout = cache.prepare(ids, X.shape[1])
        rows = cache.open_rows(writable=True)
        for start in range(lo, hi, _COPY):
            stop = min(start + _COPY, hi)
            rows[start - lo : stop - lo] = X[start:stop]
        rows.flush()
        del rows
        cache.mark_done(layout._replace(done=np.ones(len(ids), dtype=bool)))
        pool = CenterPool(
            name=name,
            root=root / name / "no-images",
            samples=[Sample(i, f"{i}.png", None, IMAGE_SIZE, IMAGE_SIZE, "PNG") for i in ids],
            embeddings=cache.read().embeddings,
            disruptive=np.zeros(len(ids), dtype=bool),
            disruption=[""] * len(ids),
            fingerprint=encoder_fingerprint(spec),
            counts=PoolCounts(len(ids), len(ids), 0, 0, 0),
            image_sum=np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3)),
        )
        CenterState(root / name).save_pool(run, pool, spec)
        names.append(name)
    return names


def stored_inventory(request: InventoryRequest, paths: CenterPaths) -> InventoryReply:
    """The inventory reply of a center whose pool is already in its state folder."""
    pool = CenterState(paths.state).load_pool(request.run)
    counts = pool.counts
    return InventoryReply(
        center=paths.name, files=counts.files, samples=counts.samples,
        unreadable=counts.unreadable, duplicate_files=counts.duplicate_files,
        disruptive=counts.disruptive, dim=int(pool.embeddings.shape[1]),
        fingerprint=pool.fingerprint,
    )  # fmt: skip


def client_app(names: list[str], root: Path) -> ClientApp:
    """FedDEL's ClientApp with the stored inventory; partition-id i is center i."""
    app = ClientApp()
    phases = {**PHASES, "inventory": (InventoryRequest, stored_inventory)}
    for action, (request_type, handler) in phases.items():
        app.query(action)(_phase(request_type, handler, names, root))
    return app


def _phase(request_type: type[Payload], handler: Any, names: list[str], root: Path) -> Any:
    def handle(message: Message, context: Context) -> Message:
        name = names[int(context.node_config["partition-id"])]
        paths = CenterPaths(name, root / name / "no-images", root / name)
        reply = handler(request_type.from_record(message.content), paths)
        return Message(reply.to_record(), reply_to=message)

    return handle


def run_round(
    data: SyntheticSet, work: Path, config: CurationConfig, workers: int = 8
) -> RoundSummary:
    """Write the centers' states under `work`, run one in-process round; return its summary.

    The summary's `wall_s` is the coordinator's round (phases 0-4), not the state writing.
    """
    spec = encoder_for(int(data.open().shape[1]), config.seed)
    config = dataclasses.replace(
        config, model=spec.model, image_size=IMAGE_SIZE, out=str(work / "coordinator"),
        min_centers=len(data.sizes),
    )  # fmt: skip
    names = write_states(data, work / "centers", spec, config.run_name)
    captured: list[RoundSummary] = []
    server_app = build_server_app(lambda _context: config, on_summary=captured.append)
    grid = InProcessGrid(
        client_app(names, work / "centers"), len(names), workers=min(workers, len(names))
    )
    quiet = logging.getLogger("feddel.client.report")  # no images: every thumbnail would warn
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        server_app(
            grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        )
    finally:
        grid.shutdown()
        quiet.setLevel(level)
    if not captured:
        raise RuntimeError(f"the synthetic round under {work} wrote no summary; see the log")
    return captured[0]
