"""What each center sends, captured on the wire and checked: no per-sample information leaves.

Runs one federated round in-process, with the default privacy settings, on a federation with
one small center, one 10x larger and a third (secure sums need three), and inspects every
reply as serialized bytes and as decoded arrays.
"""

import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
from flwr.common import serde

from feddel.client.state import CenterState
from feddel.common.config import CurationConfig
from feddel.common.errors import ProtocolError
from feddel.common.wire.protocol import SeedReply, record_bytes
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

MIN_COUNT = 10


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """Round over centers 'small' (one generated center), 'large' (ten merged ones) and
    'third' (one more generated center)."""
    root = tmp_path_factory.mktemp("wire")
    generate_federation(root / "gen", centers=12, scale="small", seed=3, size=32)
    centers = sorted(p for p in (root / "gen").iterdir() if p.is_dir())
    data = root / "data"
    by_size = sorted(centers, key=lambda p: len(list((p / "images").iterdir())))
    small, third = by_size[len(by_size) // 2], by_size[0]
    rest = [p for p in centers if p not in (small, third)]
    shutil.copytree(small / "images", data / "small" / "images")
    shutil.copytree(third / "images", data / "third" / "images")
    (data / "large" / "images").mkdir(parents=True)
    for donor in rest:  # prefix names: every generated center has a v0000_f00.png
        for image in (donor / "images").iterdir():
            shutil.copyfile(image, data / "large" / "images" / f"{donor.name}-{image.name}")
    replies = defaultdict(list)
    config = CurationConfig(image_size=32, k=4, k_local=4, budget=0.1, min_count=MIN_COUNT)
    summary = run_federated(
        data, root / "run", config, engine="inprocess", state_root=root / "state",
        observer=lambda node, message: replies[node].append(message),
    )  # fmt: skip
    names = {1001: "large", 1002: "small", 1003: "third"}  # partition order = sorted names
    pools = {n: CenterState(root / "state" / n).load_pool("run") for n in names.values()}
    return {names[node]: msgs for node, msgs in replies.items()}, pools, summary, root / "state"


def test_wire_no_sample_id_or_path_in_any_reply(captured):
    replies, pools, _, _ = captured
    for center, messages in replies.items():
        wire = b"".join(serde.recorddict_to_proto(m.content).SerializeToString() for m in messages)
        for sample in pools[center].samples:
            assert sample.sample_id.encode() not in wire
            assert sample.file.encode() not in wire
            assert sample.file.rsplit("/", 1)[-1].encode() not in wire


def _arrays(message):
    return {
        name: array.numpy()
        for record in message.content.array_records.values()
        for name, array in record.items()
    }


def test_wire_no_embedding_leaves_a_center(captured):
    replies, pools, _, _ = captured
    for center, messages in replies.items():
        embeddings = np.asarray(pools[center].embeddings, dtype=np.float64)
        for message in messages:
            for array in _arrays(message).values():
                if array.ndim == 2 and array.shape[1] == embeddings.shape[1] and len(array):
                    nearest = ((array[:, None, :] - embeddings[None]) ** 2).sum(-1).min(1)
                    assert nearest.min() > 1e-8, "an embedding left the center"


def test_wire_no_array_scales_with_the_number_of_samples(captured):
    """Per-sample scores would make some array grow with n: the 10x center sends the same shapes."""
    replies, _, _, _ = captured

    def shapes(center):
        return sorted(
            (m.metadata.message_type, name, a.shape[1:] if name == "centroids" else a.shape)
            for m in replies[center]
            for name, a in _arrays(m).items()
        )

    assert shapes("large") == shapes("small")


def test_wire_seed_counts_respect_min_count(captured):
    replies, _, _, _ = captured
    for messages in replies.values():
        for message in messages:
            if message.metadata.message_type == "query.seed":
                counts = SeedReply.from_record(message.content).counts
                assert ((counts == 0) | (counts >= MIN_COUNT)).all()


def test_wire_masked_replies_do_not_reveal_the_center_statistics(captured):
    """Every masked vector looks uniformly random: each Lloyd reply alone, and a center's
    (short) cell-count replies together."""
    replies, _, _, _ = captured
    for messages in replies.values():
        counts = []
        for message in messages:
            kind = message.metadata.message_type
            if kind not in ("query.lloyd", "query.counts"):
                continue
            masked = message.content.array_records["arrays"]["masked"].numpy()
            bits = np.unpackbits(masked.view(np.uint8))
            if kind == "query.counts":
                counts.append(bits)
            else:
                assert _fair_coin(bits)
        assert _fair_coin(np.concatenate(counts))


def _fair_coin(bits: np.ndarray) -> bool:
    """The share of ones within 5 standard errors of 1/2 (a false alarm once in 1.7 million);
    a fixed margin would be below one standard error for a short reply."""
    return abs(bits.mean() - 0.5) <= 5 * 0.5 / np.sqrt(len(bits))


def test_wire_bytes_do_not_grow_with_the_number_of_images(captured):
    replies, pools, _, _ = captured
    assert len(pools["large"].samples) >= 10 * len(pools["small"].samples)
    sent = {c: sum(record_bytes(m.content) for m in msgs) for c, msgs in replies.items()}
    assert sent["large"] <= 1.05 * sent["small"]


def test_wire_coordinator_sees_no_aggregate_cell_under_min_count(captured):
    _, _, summary, _ = captured
    for cell in summary.clusters.candidates:
        assert cell == 0 or cell >= MIN_COUNT


def test_wire_every_masked_vector_of_a_run_has_its_own_masks(captured):
    """Two Lloyd rounds under one mask would let the coordinator subtract them."""
    _, _, summary, state_root = captured
    for center in ("small", "large", "third"):
        masks = state_root / center / "runs" / "run" / "masks.json"
        contexts = json.loads(masks.read_text())
        lloyd = [key for key in contexts if "/lloyd/" in key]
        counts = [key for key in contexts if "/counts/" in key]
        assert len(lloyd) == len(counts) == summary.kmeans_rounds > 1
        assert len({key.rsplit("/", 1)[1] for key in contexts}) == len(contexts)


def test_center_refuses_a_mask_context_reused_for_other_values(tmp_path):
    state = CenterState(tmp_path)
    context = b"feddel/run/lloyd/0"
    state.claim_mask("run", context, np.arange(3.0))
    state.claim_mask("run", context, np.arange(3.0))  # a replay of the same values is fine
    with pytest.raises(ProtocolError, match="reused secure-sum context"):
        state.claim_mask("run", context, np.arange(3.0) + 1)
