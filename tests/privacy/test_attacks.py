"""A curious coordinator attacks the round: what it sees, and what it cannot recover from it.

Each attack is run as the coordinator would run it, on a 6-center synthetic federation with the
default settings, and must recover nothing within a stated distance. The distance is always
the one the coordinator is entitled to: what a released aggregate already tells it (a member
of a cluster lies about one RMS radius from the centroid; the federated mean image is the
best image guess without the target). On main (before the privacy floor) the same attacks
recovered embeddings to ~3e-7 and an added image exactly; docs/experiments.md has the numbers.
"""

import itertools
import shutil
from collections import defaultdict

import numpy as np
import pytest

from feddel.client import handlers
from feddel.client.handlers import CenterPaths
from feddel.client.state import CenterState
from feddel.common.config import CurationConfig
from feddel.common.curation.kmeans import assign, unit_row_stats
from feddel.common.curation.methods import FEDDEL
from feddel.common.errors import ProtocolError, Refused, RunFailed
from feddel.common.privacy import secagg
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.wire.protocol import (
    CountsRequest,
    InventoryReply,
    InventoryRequest,
    KeysRequest,
    LloydRequest,
    MeanImageRequest,
    SeedRequest,
    centers_digest,
    lloyd_layout,
    mean_image_layout,
    roster_array,
    sum_ring,
    unpack,
)
from feddel.server import broadcast
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

SIZE = 32
CONFIG = CurationConfig(image_size=SIZE, k=8)  # every privacy setting at its default
SAMPLES = 10_000  # bounds every secure sum asked by hand here (the federation holds fewer)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    generate_federation(root / "data", centers=6, scale="small", seed=3, size=SIZE)
    return root


def _centers(federation):
    return sorted(p for p in (federation / "data").iterdir() if p.is_dir())


def _eligible(state, run):
    pool = CenterState(state).load_pool(run)
    return np.asarray(pool.embeddings, dtype=np.float64)[FEDDEL.eligible(pool.disruptive)]


@pytest.fixture(scope="module")
def coordinator_view(federation):
    """One default round; every secure sum the coordinator unmasked, with what it asked and,
    for the Lloyd phases, the centers the sum was about."""
    seen, counted = [], []
    original = broadcast.Broadcaster.secure_sum

    def spy(self, make_request, reply_type, layout, *args, **kwargs):
        total, replies = original(self, make_request, reply_type, layout, *args, **kwargs)
        request = make_request([self.public_keys[n] for n in sorted(replies)], 0)
        if reply_type.ACTION == "counts":
            counted.append(request.centers)
        centers = counted[-1][request.open > 0] if reply_type.ACTION == "lloyd" else None
        seen.append((reply_type.ACTION, request, total.copy(), sorted(replies), centers))
        return total, replies

    broadcast.Broadcaster.secure_sum = spy
    try:
        run_federated(federation / "data", federation / "run", CONFIG, engine="inprocess",
                      state_root=federation / "state")  # fmt: skip
    finally:
        broadcast.Broadcaster.secure_sum = original
    states = [federation / "state" / c.name for c in _centers(federation)]
    X = np.concatenate([_eligible(state, "run") for state in states])
    return seen, X


def _tar(seen, X):
    """The TAR step (arXiv 2511.07073): for consecutive Lloyd rounds, a cell whose count moved
    by one gives (sum difference) = the one embedding that moved. Returns, per such cell where
    exactly one sample truly moved: (error of the raw estimate, error of a shrunk estimate,
    distance of the sample to its centroid), all to the sample that moved."""
    rounds = [(centers, unpack(lloyd_layout(*centers.shape), total))
              for action, _, total, _, centers in seen if action == "lloyd"]  # fmt: skip
    results = []
    for (c0, a), (c1, b) in itertools.pairwise(rounds):
        labels0, labels1 = assign(X, c0).labels, assign(X, c1).labels
        for j in range(len(c1)):
            i = int(np.argmin(((c0 - c1[j]) ** 2).sum(axis=1)))  # the coordinator's matching
            step = round(b["count"][j] - a["count"][i])
            joined = np.flatnonzero((labels1 == j) & (labels0 != i))
            left = np.flatnonzero((labels0 == i) & (labels1 != j))
            moved = joined if step == 1 else left
            if abs(step) != 1 or len(joined) + len(left) != 1:
                continue
            target = X[moved[0]]
            estimate = step * (b["sum"][j] - a["sum"][i])
            centroid = b["sum"][j] / b["count"][j]
            # a smarter attacker shrinks toward the centroid by the noise it knows is there
            noise2 = 2 * CONFIG.noise_sigma**2 * X.shape[1]
            spread2 = unit_row_stats(b["count"], b["sum"], c1).sqdist[j] / b["count"][j]
            shrunk = centroid + spread2 / (spread2 + noise2) * (estimate - centroid)
            results.append((np.linalg.norm(estimate - target), np.linalg.norm(shrunk - target),
                            np.linalg.norm(centroid - target)))  # fmt: skip
    return np.array(results)


def test_differencing_consecutive_lloyd_rounds_recovers_no_embedding(coordinator_view):
    """Stated distance: the moved sample's distance to its cluster's centroid, which the
    coordinator knows anyway. Every raw TAR estimate must land farther from the sample than
    that (on main: 16 of 20 within 3e-7), and even an attacker that shrinks its estimate by the
    known noise must stay within 10% of it (it can only fall back on the centroid)."""
    seen, X = coordinator_view
    results = _tar(seen, X)
    assert len(results) >= 5, "the round gave too few single-sample moves to attack"
    raw, shrunk, centroid = results.T
    print(f"TAR: {len(results)} single moves; raw error median {np.median(raw):.3f}, min "
          f"{raw.min():.3f}; shrunk / centroid median {np.median(shrunk / centroid):.3f}; "
          f"centroid distance median {np.median(centroid):.3f}")  # fmt: skip
    assert (raw > centroid).all()
    assert np.median(shrunk / centroid) >= 0.9


def test_no_sum_of_a_cell_under_min_count_is_ever_unmasked(coordinator_view):
    """Counts first: every unmasked Lloyd sum and every histogram row describes >= min-count
    samples; every secure sum had a roster of >= min-roster centers."""
    seen, _ = coordinator_view
    assert {action for action, *_ in seen} >= {"counts", "lloyd", "score", "histograms", "select"}
    for action, request, total, roster, centers in seen:
        assert len(roster) >= CONFIG.min_roster
        if action == "lloyd":
            counts = unpack(lloyd_layout(*centers.shape), total)["count"]
            assert (np.rint(counts) >= CONFIG.min_count).all()
        if action == "histograms":
            rows = total.reshape(len(request.open), -1).sum(axis=1)
            assert ((rows == 0) | (rows >= CONFIG.min_count)).all()
            assert not rows[request.open == 0].any()


def _paths(federation, center, policy=None):
    return CenterPaths(center.name, center, federation / "state" / center.name,
                       policy or PrivacyPolicy())  # fmt: skip


def test_min_count_1_and_k_local_256_are_refused_and_nothing_is_sent(federation, tmp_path):
    """On main this request made the seed phase send 174 centroids, each one embedding."""
    replies = defaultdict(list)
    config = CurationConfig(image_size=SIZE, min_count=1, k_local=256)
    with pytest.raises(RunFailed, match=r"refused: min-count=1 is below this center's min-"):
        run_federated(federation / "data", tmp_path / "run", config, engine="inprocess",
                      state_root=federation / "state",
                      observer=lambda node, message: replies[node].append(message))  # fmt: skip
    sent = [m for messages in replies.values() for m in messages if not m.has_error()]
    assert sent == []  # every center refused before doing anything
    center = _centers(federation)[0]
    seed = dict(run="run", method="feddel", seed=0, noise_sigma=CONFIG.noise_sigma)
    with pytest.raises(Refused, match="k-local=256 is above this center's max-k-local=16"):
        handlers.seed(SeedRequest(**seed, k_local=256, min_count=10), _paths(federation, center))
    with pytest.raises(Refused, match="min-count=1 is below"):
        handlers.seed(SeedRequest(**seed, k_local=8, min_count=1), _paths(federation, center))


def test_a_secure_sum_over_one_center_is_refused(federation, coordinator_view):
    """On main a one-key roster left the reply unmasked: the center's exact per-cluster sums."""
    center = _centers(federation)[0]
    private = CenterState(federation / "state" / center.name).secagg_key("run")
    roster = roster_array([secagg.public_key(private)])
    request = CountsRequest(
        run="run", attempt=10_000, roster=roster, noise_sigma=0.0, count_sigma=0.0,
        samples=SAMPLES, method="feddel",
        centers=np.zeros((2, next(iter(coordinator_view[1])).size)),
    )  # fmt: skip
    with pytest.raises(Refused, match="secure sum over 1 center"):
        handlers.counts(request, _paths(federation, center))


def test_a_sum_bounded_below_a_centers_own_samples_is_refused(federation, coordinator_view):
    """A coordinator that understates the federation's samples would fit the ring too tight
    for the center's values: the center fails the phase by name instead of sending a sum
    that could wrap."""
    centers = next(item for item in coordinator_view[0] if item[0] == "lloyd")[-1]
    paths = [_paths(federation, c) for c in _centers(federation)][:3]
    keys = roster_array([secagg.public_key(CenterState(p.state).secagg_key("run")) for p in paths])
    request = CountsRequest(
        run="run", attempt=70_000, roster=keys, noise_sigma=CONFIG.noise_sigma, count_sigma=0.0,
        samples=1, method="feddel", centers=centers,
    )  # fmt: skip
    with pytest.raises(ProtocolError, match=r"holds \d+ samples; the secure sum is bounded for 1"):
        handlers.counts(request, paths[0])


def _mean_image_sums(federation, data, state, run):
    """The coordinator's unmasked mean-image secure sum over the first three centers."""
    centers = sorted(p for p in data.iterdir() if p.is_dir())[:3]
    paths = [CenterPaths(c.name, c, state / c.name) for c in centers]
    keys = []
    for path in paths:
        handlers.inventory(InventoryRequest(run=run, round=0, model=CONFIG.model,
                                            image_size=SIZE, weights="", seed=0,
                                            min_count=10), path)  # fmt: skip
        keys.append(handlers.keys(KeysRequest(run=run), path).public_key)
    request = MeanImageRequest(
        run=run, attempt=0, roster=roster_array(keys), noise_sigma=CONFIG.image_noise,
        count_sigma=0.0, samples=SAMPLES, image_size=SIZE, min_count=10,
    )  # fmt: skip
    masked = [handlers.mean_image(request, path).masked for path in paths]
    layout = mean_image_layout(SIZE)
    parts = unpack(layout, secagg.unmasked_sum(masked, sum_ring(layout, request)))
    pool = CenterState(state / centers[0].name).load_pool(run)
    return parts, pool.image_sum


def _blur(image, block):
    """Box-blur by `block` x `block` pixel blocks (an attacker's denoising)."""
    h = image.shape[0] // block
    coarse = image.reshape(h, block, h, block, 3).mean(axis=(1, 3))
    return np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)


def test_image_sum_differencing_between_two_runs_recovers_no_image(federation, tmp_path):
    """Two runs whose data differ by one image at one center. On main the inventory's
    image_sum in the clear gave that image exactly. Now there is no image in the inventory,
    and the mean-image sum is secure and noisy: the difference, even blurred, must be no closer
    (RMSE) to the added image than the federated mean image (which the coordinator has)."""
    assert not any(f.metadata.get("array") for f in InventoryReply.__dataclass_fields__.values())
    data = tmp_path / "data"
    shutil.copytree(federation / "data", data)
    first = sorted(p for p in data.iterdir() if p.is_dir())
    before, sum_before = _mean_image_sums(federation, data, tmp_path / "state-a", "a")
    donor = sorted((first[3] / "images").iterdir())[0]
    shutil.copyfile(donor, first[0] / "images" / f"added-{donor.name}")
    after, sum_after = _mean_image_sums(federation, data, tmp_path / "state-b", "b")
    added = sum_after - sum_before  # the added image as the center decoded it
    assert after["count"][0] == before["count"][0] + 1
    mean = after["image_sum"] / after["count"][0]
    baseline = np.sqrt(((mean - added) ** 2).mean())
    estimate = after["image_sum"] - before["image_sum"]
    errors = {block: np.sqrt(((_blur(estimate, block) - added) ** 2).mean())
              for block in (1, 2, 4, 8, 16)}  # fmt: skip
    # not block 32, the whole 32 px image: its 3 numbers (the added image's mean colour) carry
    # noise of sd ~360, which lands closer than the mean image about one run in five
    print(f"image differencing RMSE by blur block {errors}; mean image RMSE {baseline:.1f}")
    assert min(errors.values()) > baseline


def test_a_one_image_center_adds_nothing_to_the_mean_image(federation, tmp_path):
    center = tmp_path / "tiny"
    (center / "images").mkdir(parents=True)
    shutil.copyfile(sorted((_centers(federation)[0] / "images").iterdir())[0],
                    center / "images" / "only.png")  # fmt: skip
    paths = CenterPaths("tiny", center, tmp_path / "state")
    handlers.inventory(InventoryRequest(run="r", round=0, model=CONFIG.model, image_size=SIZE,
                                        weights="", seed=0, min_count=10), paths)  # fmt: skip
    private = CenterState(paths.state).new_secagg_key("r")
    others = [secagg.public_key(secagg.generate_private_key()) for _ in range(2)]
    roster = [secagg.public_key(private), *others]
    request = MeanImageRequest(
        run="r", attempt=0, roster=roster_array(roster), noise_sigma=0.0, count_sigma=0.0,
        samples=SAMPLES, image_size=SIZE, min_count=10,
    )  # fmt: skip
    lenient = PrivacyPolicy(min_image_noise=0.0)  # no noise: see exactly what it adds
    masked = handlers.mean_image(request, CenterPaths("tiny", center, paths.state, lenient)).masked
    ring = sum_ring(mean_image_layout(SIZE), request)
    own_mask = secagg.mask(private, roster, secagg.context("r", "mean_image", 0), ring)
    assert not secagg.decode(masked - own_mask, ring).any()  # zeros: its image never enters a sum


def _lloyd_replies(paths, centers, attempt):
    """Every member's masked Lloyd statistics of `centers`, as the coordinator would ask them:
    the cell counts first (sequence `attempt`), then the statistics (`attempt` + 1); with the
    ring they are in."""
    keys = roster_array([secagg.public_key(CenterState(p.state).secagg_key("run")) for p in paths])
    asked = dict(run="run", roster=keys, noise_sigma=CONFIG.noise_sigma, count_sigma=0.0,
                 samples=SAMPLES, method="feddel")  # fmt: skip
    for path in paths:
        handlers.counts(CountsRequest(**asked, attempt=attempt, centers=centers), path)
    stats = LloydRequest(**asked, attempt=attempt + 1, cells=centers_digest(centers),
                         open=np.ones(len(centers), dtype=np.int64))  # fmt: skip
    masked = [handlers.lloyd(stats, path).masked for path in paths]
    return masked, sum_ring(lloyd_layout(*centers.shape), stats)


def test_a_single_centers_contribution_cannot_be_isolated(federation, coordinator_view):
    """What the coordinator holds of one Lloyd round: one masked vector per center and their
    sum. Any single vector, and the sum of any strict subset of the roster, are unrelated to
    the centers' statistics (the masks do not cancel); only the whole roster's sum decodes,
    and it carries the noise. The stated distance: the words of a partial sum differ from
    the encoded truth by uniform words (mean |difference| half the signed range, 2^31 for
    32-bit words), where a sum that revealed anything would be within a few steps of it."""
    seen, _ = coordinator_view
    *_, roster, centers = next(item for item in seen if item[0] == "lloyd")
    paths = [_paths(federation, c) for c in _centers(federation)]
    assert len(paths) == len(roster) >= 3
    masked, ring = _lloyd_replies(paths, centers, 50_000)  # a replay: new masks
    layout = lloyd_layout(*centers.shape)
    truths = []
    for path in paths:
        X = _eligible(path.state, "run")
        truths.append(np.concatenate([
            np.bincount(assign(X, centers).labels, minlength=len(centers)),
            np.zeros(sum(int(np.prod(s)) for s in layout.values()) - len(centers)),
        ]))  # fmt: skip
    half = 2.0 ** (ring.bits - 1)
    for subset in ([0], [1, 2], [0, 1, 2, 3, 4]):
        words = np.sum([masked[i] for i in subset], axis=0, dtype=ring.dtype)
        truth = secagg.encode(np.sum([truths[i] for i in subset], axis=0), ring)
        difference = (words - truth).view(f"int{ring.bits}").astype(np.float64)
        assert abs(np.abs(difference).mean() / half - 0.5) < 0.1
    whole = unpack(layout, secagg.unmasked_sum(masked, ring))
    counts = np.sum([t[: len(centers)] for t in truths], axis=0)
    np.testing.assert_allclose(whole["count"], counts, atol=1e-6)  # counts: exact, aggregate
    bits = np.unpackbits(np.concatenate(masked).view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01


def test_subset_differencing_by_a_coordinator_that_asks_twice_meets_the_noise(
    federation, coordinator_view
):
    """A coordinator that (against the protocol) gets two complete sums of the same round,
    over all six centers and over five, learns the sixth center's statistics plus the
    difference of two independent noises, of norm sigma x sqrt(2 d) per cluster sum (about 1
    for d = 192, the radius of the sphere the embeddings lie on). Stated distance: every
    isolated per-cluster sum is off by at least half that, so even a cluster of one member at
    that center (its sum is one embedding) is not recovered."""
    seen, X = coordinator_view
    centers = next(item for item in seen if item[0] == "lloyd")[-1]
    paths = [_paths(federation, c) for c in _centers(federation)]
    layout = lloyd_layout(*centers.shape)
    sums = []
    for attempt, members in ((60_000, paths), (60_010, paths[:-1])):
        masked, ring = _lloyd_replies(members, centers, attempt)
        sums.append(unpack(layout, secagg.unmasked_sum(masked, ring)))
    isolated = sums[0]["sum"] - sums[1]["sum"]
    Xc = _eligible(paths[-1].state, "run")
    labels = assign(Xc, centers).labels
    truth = np.array([Xc[labels == j].sum(axis=0) for j in range(len(centers))])
    error = np.linalg.norm(isolated - truth, axis=1)
    expected = CONFIG.noise_sigma * np.sqrt(2 * X.shape[1])
    assert (error > 0.5 * expected).all(), error


def test_asking_the_same_lloyd_statistics_again_and_averaging_gains_nothing(
    federation, coordinator_view
):
    """A coordinator that (against the protocol) asks one round's statistics again and again,
    under new sequence numbers and with the centers reordered, to average the noise away: on
    main every ask drew fresh noise, so 8 asks cut it by sqrt(8). The noise is keyed by each
    cell's own values, so every ask returns the very same noisy sums and their average is no
    closer to the truth than one ask."""
    seen, _ = coordinator_view
    centers = next(item for item in seen if item[0] == "lloyd")[-1]
    paths = [_paths(federation, c) for c in _centers(federation)]
    layout = lloyd_layout(*centers.shape)
    order = np.arange(len(centers))[::-1]
    asks = []
    for i in range(8):
        permutation = order if i % 2 else np.arange(len(centers))
        masked, ring = _lloyd_replies(paths, centers[permutation], 70_000 + 2 * i)
        sums = unpack(layout, secagg.unmasked_sum(masked, ring))["sum"]
        asks.append(sums[np.argsort(permutation)])  # back in the first ask's order
    for other in asks[1:]:
        np.testing.assert_array_equal(other, asks[0])
    X = np.concatenate([_eligible(p.state, "run") for p in paths])
    labels = assign(X, centers).labels
    truth = np.array([X[labels == j].sum(axis=0) for j in range(len(centers))])
    one = np.linalg.norm(asks[0] - truth, axis=1)
    averaged = np.linalg.norm(np.mean(asks, axis=0) - truth, axis=1)
    assert (one > 0.5 * CONFIG.noise_sigma * np.sqrt(X.shape[1])).all(), one
    np.testing.assert_allclose(averaged, one)
