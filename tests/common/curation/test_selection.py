import numpy as np
import pytest

from feddel.common.curation.local import ETA_GRID, plan_feddel, score_center
from feddel.common.curation.selection import (
    ClusterPlan,
    apply_plan,
    boundary_draw,
    cosine_distance_to_centroid,
    meddel_survivors_by_eta,
    near_duplicate_mask,
    outlier_mask,
    pick_eta,
    plan_from_histograms,
    random_selection,
    score_edges,
    score_histograms,
    water_fill,
    within_series_share,
)
from feddel.common.errors import ConfigError, DataError, ProtocolError


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _reference_greedy(X, order, eta):
    kept = []
    for i in order:
        if all(float(X[i] @ X[j]) <= eta for j in kept):
            kept.append(i)
    return kept


def test_cosine_distance_to_centroid_hand_toy():
    X = np.array([[1, 0], [0, 1], [-1, 0], [0, 0]], dtype=np.float32)
    dist = cosine_distance_to_centroid(X, np.zeros(4, dtype=int), np.array([[2.0, 0.0]]))
    np.testing.assert_allclose(dist, [0.0, 1.0, 2.0, 1.0])


def test_outlier_mask_keeps_distances_up_to_eps():
    assert outlier_mask(np.array([0.1, 0.9, 0.95])).tolist() == [True, True, False]
    with pytest.raises(ConfigError, match="eps=0 must be in"):
        outlier_mask(np.array([0.1]), eps=0)


@pytest.mark.parametrize(("keep", "kept_copy"), [("hard", 2), ("easy", 0)])
def test_near_duplicate_mask_keeps_one_copy_by_hardness_and_the_distinct(keep, kept_copy):
    # three near copies at growing distance from the centroid (1, 0), one distinct sample
    X = _unit([[1.0, 0.30], [1.0, 0.31], [1.0, 0.32], [0.2, 1.0]])
    labels = np.zeros(4, dtype=int)
    hardness = cosine_distance_to_centroid(X, labels, np.array([[1.0, 0.0]]))
    mask = near_duplicate_mask(X, labels, 0.99, hardness, keep=keep)
    expected = [False, False, False, True]
    expected[kept_copy] = True
    assert mask.tolist() == expected


def test_near_duplicate_mask_dedups_within_each_group_and_cluster_only():
    X = _unit([[1.0, 0.30], [1.0, 0.31], [1.0, 0.32], [1.0, 0.33]])
    hardness = np.array([0.1, 0.2, 0.3, 0.4])
    same = near_duplicate_mask(X, np.zeros(4, int), 0.99, hardness)
    assert same.tolist() == [False, False, False, True]
    by_group = near_duplicate_mask(X, np.zeros(4, int), 0.99, hardness, groups=["a", "b", "a", "b"])
    assert by_group.tolist() == [False, False, True, True]
    by_cluster = near_duplicate_mask(X, np.array([1, 0, 1, 0]), 0.99, hardness)
    assert by_cluster.tolist() == [False, False, True, True]


def test_near_duplicate_mask_matches_plain_greedy_across_blocks():
    rng = np.random.default_rng(0)
    X = _unit(rng.standard_normal((2600, 6)))  # one cell larger than two blocks of 1024
    labels = (rng.random(2600) < 0.1).astype(int)
    hardness = rng.random(2600).round(2)  # many ties: resolved by index
    mask = near_duplicate_mask(X, labels, 0.9, hardness, keep="hard")
    for j in (0, 1):
        idx = np.flatnonzero(labels == j)
        order = idx[np.lexsort((idx, -hardness[idx]))]
        expected = sorted(_reference_greedy(X, order, 0.9))
        assert expected == np.flatnonzero(mask & (labels == j)).tolist()


def test_meddel_survivors_by_eta_matches_dedup_and_pick_eta_hits_target():
    rng = np.random.default_rng(1)
    X = _unit(rng.standard_normal((600, 5)))
    labels = rng.integers(0, 3, 600)
    hardness = rng.random(600)
    groups = rng.integers(0, 2, 600)
    grid = [0.7, 0.8, 0.9, 0.95]
    counts = meddel_survivors_by_eta(X, labels, grid, hardness, "hard", groups)
    expected = [near_duplicate_mask(X, labels, e, hardness, "hard", groups).sum() for e in grid]
    assert counts.tolist() == expected
    assert counts.tolist() == sorted(counts.tolist())  # looser threshold, more survivors
    assert pick_eta(grid, counts, int(counts[2]) + 1) == 0.9
    assert pick_eta([0.7, 0.8], [10, 30], 20) == 0.8  # tie -> the higher eta


@pytest.mark.parametrize(
    ("eligible", "budget", "quotas"),
    [
        ([1, 10, 10], 12, [1, 6, 5]),
        ([0, 0, 5], 3, [0, 0, 3]),
        ([3, 3, 3], 7, [3, 2, 2]),
        ([2, 9, 4, 9], 20, [2, 7, 4, 7]),
        ([2, 9, 4, 9], 100, [2, 9, 4, 9]),
        ([5, 5], 0, [0, 0]),
    ],
)
def test_water_fill_hand_cases(eligible, budget, quotas):
    assert water_fill(np.array(eligible), budget).tolist() == quotas


def test_water_fill_invariants_on_random_cases():
    rng = np.random.default_rng(2)
    for _ in range(300):
        eligible = rng.integers(0, 50, rng.integers(1, 12))
        budget = int(rng.integers(0, 400))
        q = water_fill(eligible, budget)
        assert q.sum() == min(budget, eligible.sum())
        assert (q <= eligible).all() and (q >= 0).all()
        open_ = q < eligible
        if open_.any():  # clusters not yet full sit at the water level (or one above)
            assert q[open_].max() - q[open_].min() <= 1
            assert (q[~open_] <= q[open_].min() + 1).all()


def test_water_fill_rejects_non_counts():
    with pytest.raises(DataError, match="eligible must be"):
        water_fill(np.array([1.5, 2.0]), 2)
    with pytest.raises(ConfigError, match="budget=-1"):
        water_fill(np.array([1, 2]), -1)


def test_score_histograms_clip_outside_values():
    edges = score_edges(0.0, 4.0, 4)
    np.testing.assert_array_equal(edges, [0, 1, 2, 3, 4])
    scores = np.array([-3.0, 0.0, 0.99, 1.0, 3.5, 4.0, 9.0])
    hist = score_histograms(scores, np.array([0, 0, 0, 1, 1, 1, 1]), 2, edges)
    np.testing.assert_array_equal(hist, [[3, 0, 0, 0], [0, 1, 0, 3]])
    with pytest.raises(ConfigError, match="lo < hi"):
        score_edges(1.0, 1.0)


def test_plan_from_histograms_hand_case():
    plans = plan_from_histograms(
        np.array([[2, 3, 5], [2, 3, 5], [2, 3, 5], [0, 0, 4]]), np.array([4, 0, 2, 4])
    )
    assert plans == [
        ClusterPlan(4, 1, 2 / 3),
        ClusterPlan(0, 0, 0.0),
        ClusterPlan(2, 0, 1.0),
        ClusterPlan(4, 2, 1.0),
    ]
    with pytest.raises(ProtocolError, match="quota 11 of cluster 0 is outside"):
        plan_from_histograms(np.array([[2, 3, 5]]), np.array([11]))


def _toy_federation(rng, n=3000, k=4):
    scores = rng.normal(0, 1, n).round(3)
    labels = rng.integers(0, k, n)
    ids = [f"sample-{i:05d}" for i in range(n)]
    edges = score_edges(-3.0, 3.0, 16)
    quotas = water_fill(np.bincount(labels, minlength=k), 500)
    return scores, labels, ids, edges, quotas


def test_apply_plan_with_one_center_selects_exactly_the_quotas():
    rng = np.random.default_rng(3)
    scores, labels, ids, edges, quotas = _toy_federation(rng)
    plans = plan_from_histograms(score_histograms(scores, labels, 4, edges), quotas)
    selected = apply_plan(scores, labels, ids, edges, plans, seed=7)
    np.testing.assert_array_equal(np.bincount(labels[selected], minlength=4), quotas)
    hardest = _select_hardest(scores, labels, quotas)
    np.testing.assert_array_equal(np.bincount(labels[hardest], minlength=4), quotas)
    bins = np.searchsorted(edges, scores, side="right") - 1
    for j, plan in enumerate(plans):  # below the threshold bin both take everything
        below = (labels == j) & (bins < plan.threshold_bin)
        assert selected[below].all() and hardest[below].all()
        assert not selected[(labels == j) & (bins > plan.threshold_bin)].any()


@pytest.mark.parametrize("n_centers", [2, 5, 31])
def test_apply_plan_across_centers_is_within_half_a_sample_per_center(n_centers):
    rng = np.random.default_rng(4)
    scores, labels, ids, edges, quotas = _toy_federation(rng)
    center = rng.integers(0, n_centers, scores.size)
    hist = sum(
        score_histograms(scores[center == c], labels[center == c], 4, edges)
        for c in range(n_centers)
    )
    plans = plan_from_histograms(hist, quotas)
    counts = np.zeros(4, dtype=int)
    for c in range(n_centers):
        mine = center == c
        my_ids = [ids[i] for i in np.flatnonzero(mine)]
        sel = apply_plan(scores[mine], labels[mine], my_ids, edges, plans, seed=7)
        counts += np.bincount(labels[mine][sel], minlength=4)
    bins = np.searchsorted(edges, scores, side="right") - 1
    for j, plan in enumerate(plans):
        holders = np.unique(center[(labels == j) & (bins == plan.threshold_bin)]).size
        assert abs(counts[j] - quotas[j]) <= holders / 2


def test_boundary_draw_is_deterministic_per_sample_and_seed():
    a = boundary_draw(["x", "y", "z"], 1)
    np.testing.assert_array_equal(a, boundary_draw(["z", "x"], 1)[[1]].tolist() + a[1:].tolist())
    assert ((a >= 0) & (a < 1)).all()
    assert not np.array_equal(a, boundary_draw(["x", "y", "z"], 2))
    draws = boundary_draw([str(i) for i in range(20000)], 0)
    assert abs(draws.mean() - 0.5) < 0.01 and abs(np.median(draws) - 0.5) < 0.01


def test_random_selection_hits_retention_and_is_decided_per_sample():
    ids = [f"img-{i}" for i in range(10000)]
    mask = random_selection(ids, 0.05, seed=3)
    assert abs(mask.mean() - 0.05) < 0.01  # 4.5 standard deviations
    half = random_selection(ids[::2], 0.05, seed=3)
    np.testing.assert_array_equal(half, mask[::2])  # a center decides alone
    assert random_selection(ids, 1.0, 3).all() and not random_selection(ids, 0.0, 3).any()


def test_meddel_eta_grid_reaches_a_5_percent_budget_on_spread_embeddings():
    """400 isotropic points: every eta >= 0.5 keeps more than 7% of them; the grid goes lower."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    counts = meddel_survivors_by_eta(X, np.zeros(400, np.int64), ETA_GRID, rng.random(400))
    assert counts[ETA_GRID >= 0.5].min() > 28
    eta = pick_eta(ETA_GRID, counts, 20)
    assert eta < 0.5 and counts[list(ETA_GRID).index(eta)] == 20


def _select_hardest(scores: np.ndarray, labels: np.ndarray, quotas: np.ndarray) -> np.ndarray:
    """Reference: the exact central selection, per cluster the quota lowest scores."""
    s = np.asarray(scores, dtype=np.float64)
    q = np.asarray(quotas, dtype=np.int64)
    y = np.asarray(labels)
    counts = np.bincount(y, minlength=q.size)
    order = np.lexsort((s, y))
    rank = np.arange(s.size) - (np.cumsum(counts) - counts)[y[order]]
    selected = np.zeros(s.size, dtype=bool)
    selected[order[rank < q[y[order]]]] = True
    return selected


# --- series: a volume's slices, a cine's frames ---------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "within"),
    [
        ("hard", [1, 1, 0, 0, 0, 1, 0, 1]),  # the hardest two of series 0, the hardest of 1
        ("easy", [0, 0, 1, 1, 1, 0, 0, 1]),
    ],
)
def test_within_series_share_keeps_the_share_of_each_series_hardest_first(keep, within):
    series = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    candidate = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=bool)  # sample 6 was a duplicate
    hardness = np.array([9.0, 8.0, 7.0, 6.0, 1.0, 5.0, 9.0, 0.0])
    # share 0.5: series 0 (4 eligible) keeps 2, series 1 (3 eligible) keeps max(1, 1), series 2
    # (a single image) keeps it: at least one
    got = within_series_share(series, candidate, np.ones(8, bool), hardness, 0.5, keep)
    np.testing.assert_array_equal(got, np.array(within, dtype=bool))
    np.testing.assert_array_equal(
        within_series_share(series, candidate, np.ones(8, bool), hardness, 0.0), candidate
    )


def test_within_series_share_rejects_bad_share():
    with pytest.raises(ConfigError, match=r"series share=1\.5 must be in \[0, 1\]"):
        within_series_share(np.zeros(2), np.ones(2, bool), np.ones(2, bool), np.zeros(2), 1.5)


def test_plan_feddel_gives_quota_to_candidates_within_their_series_share_first():
    bins = np.zeros((2, 4), dtype=np.int64)
    bins[0] = [1, 1, 0, 12]  # cluster 0: one cine's frames, 12 past its share (last bin)
    bins[1] = [4, 4, 2, 0]  # cluster 1: ten series, one candidate each
    beyond = np.array([12, 0])
    quotas, _ = plan_feddel(bins, 12, beyond)
    np.testing.assert_array_equal(quotas, [2, 10])  # within their share first
    assert list(plan_feddel(bins, 12)[0]) == [6, 6]  # without the series view
    quotas, plans = plan_feddel(bins, 20, beyond)  # the budget needs them: they come back
    np.testing.assert_array_equal(quotas, [10, 10])
    assert plans[0].threshold_bin == 3  # the last bin, where they sit, is the one cut


def test_score_center_deduplicates_within_series_and_marks_what_passes_a_series_share():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(3, 16)))
    twin = _unit([base[0] + 0.03 * rng.normal(size=16)])[0]  # cos ~0.99 with base[0]
    X = _unit(np.vstack([base, twin, base[1] + 0.01, base[2] + 0.02]))
    centers = X[:1].astype(np.float64)
    args = dict(tau=1.0, eps=2.0, eta=0.98, keep="hard")
    prior = np.ones(1)
    center_wide = score_center(X, np.ones(6, bool), centers, prior, **args)
    assert center_wide.candidate.sum() == 3  # every near-copy of the three bases dropped
    # the twin is another acquisition (series 1): kept, since 0.99 < 0.999 across series
    series = np.array([0, 0, 0, 1, 0, 0])
    per_series = score_center(X, np.ones(6, bool), centers, prior, series=series, **args)
    assert per_series.candidate[3] and per_series.candidate.sum() == 4
    shared = score_center(
        X, np.ones(6, bool), centers, prior, series=series, series_share=0.2, **args
    )
    np.testing.assert_array_equal(shared.candidate, per_series.candidate)  # nothing removed
    assert shared.beyond_share.sum() == 2  # series 0 (5 samples) keeps max(1, 1) of its 3
    assert (shared.log_gx[shared.beyond_share] == 0.0).all()  # taken last: the easiest bin
    assert not shared.beyond_share[3]  # the twin's own series keeps its one sample
    assert not shared.beyond_share[0]  # one centroid: equal scores, the first sample wins


def test_plan_feddel_gives_clusters_without_a_histogram_their_share_as_a_ranked_fraction():
    bins = np.zeros((3, 4), dtype=np.int64)
    bins[0] = [10, 10, 10, 10]  # a large cluster, histogram known
    unbinned = np.array([0, 4, 6])  # two clusters under min-count: counts only
    quotas, plans = plan_feddel(bins, 9, unbinned=unbinned)
    np.testing.assert_array_equal(quotas, [3, 3, 3])  # they share the budget like the others
    assert plans[0].ranked_fraction == 0.0 and plans[0].quota == 3
    assert plans[1] == ClusterPlan(3, 0, 0.0, 3 / 4)
    assert plans[2] == ClusterPlan(3, 0, 0.0, 3 / 6)
    before, _ = plan_feddel(bins, 9)  # what the round planned when it left them out
    np.testing.assert_array_equal(before, [9, 0, 0])


def test_apply_plan_takes_a_ranked_fraction_hardest_first_within_half_a_sample():
    edges = score_edges(-3.0, 0.0, 8)
    scores = np.array([-0.5, -2.9, -1.0, -2.0, -0.1, -2.5, -1.5])  # low = hard
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    ids = [f"s{i}" for i in range(7)]
    plans = [ClusterPlan(0, 0, 0.0), ClusterPlan(2, 0, 0.0, 0.5)]
    selected = apply_plan(scores, labels, ids, edges, plans, seed=0)
    np.testing.assert_array_equal(np.flatnonzero(selected), [1, 3])  # the two hardest of four
    plans = [ClusterPlan(0, 0, 0.0), ClusterPlan(1, 0, 0.0, 0.3)]
    assert np.flatnonzero(apply_plan(scores, labels, ids, edges, plans, seed=0)).tolist() == [1]
