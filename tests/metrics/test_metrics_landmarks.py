"""L2-LD / ALD / ALD-e / ALD-m (ours) and the ALD sum hypothesis: invariances, locality, hand-computed cases, batch
vs single, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honestface_core.errors import HonestFaceError
from honestface_core.metrics import apply_affine, fit_affine, get_scheme, landmark_distances

SCHEME_NAMES = ["wflw98", "ins106", "ibug68"]


def _random_face(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(100, 400, (n, 2))


def _random_affine(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        a = rng.normal(0, 1, (2, 2)) + np.eye(2) * rng.uniform(0.5, 2)
        if abs(np.linalg.det(a)) > 0.2:
            return a, rng.uniform(-200, 200, 2)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_affine_copy_has_zero_ald_but_large_l2(name):
    rng = np.random.default_rng(1)
    n = get_scheme(name).num_points
    for _ in range(20):
        gt = _random_face(rng, n)
        a, t = _random_affine(rng)
        pred = gt @ a.T + t
        r = landmark_distances(pred, gt, name)
        assert r["ald"] < 1e-6 and r["ald_e"] < 1e-6 and r["ald_m"] < 1e-6
        assert r["l2_ld"] > 5.0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(SCHEME_NAMES))
def test_property_affine_invariance_and_bounds(seed, name):
    rng = np.random.default_rng(seed)
    n = get_scheme(name).num_points
    gt = _random_face(rng, n)
    pred = gt + rng.normal(0, 3, gt.shape)
    r = landmark_distances(pred, gt, name)
    # the affine fit can only reduce the mean squared error; ALD <= sqrt(mean squared L2 error)
    assert r["ald"] <= np.sqrt(((pred - gt) ** 2).sum(-1).mean()) + 1e-9
    assert all(v >= 0 for v in r.values())
    # ALD of pred vs gt is unchanged when pred is moved by any affine map (the fit absorbs it)
    a, t = _random_affine(rng)
    moved = landmark_distances(pred @ a.T + t, gt, name)
    assert moved["ald"] == pytest.approx(r["ald"], rel=1e-7, abs=1e-7)
    assert moved["ald_e"] == pytest.approx(r["ald_e"], rel=1e-7, abs=1e-7)
    assert moved["ald_m"] == pytest.approx(r["ald_m"], rel=1e-7, abs=1e-7)
    # identical sets: everything 0
    same = landmark_distances(gt, gt, name)
    assert max(same.values()) < 1e-9


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_local_eye_change_moves_ald_e_not_ald_m(name):
    rng = np.random.default_rng(2)
    sch = get_scheme(name)
    gt = _random_face(rng, sch.num_points)
    pred = gt + rng.normal(0, 0.5, gt.shape)  # a restoration with small errors everywhere
    changed = pred.copy()
    eye_pts = np.asarray(sch.eyes)
    changed[eye_pts] += rng.normal(0, 4, (len(eye_pts), 2))  # eyes and brows reshaped
    before = landmark_distances(pred, gt, name)
    after = landmark_distances(changed, gt, name)
    assert after["ald_e"] - before["ald_e"] > 2.0
    # the global fit spreads a little of the change over all points: ALD-m stays ~unchanged
    assert abs(after["ald_m"] - before["ald_m"]) < 0.1 * (after["ald_e"] - before["ald_e"])
    only_mouth = pred.copy()
    only_mouth[np.asarray(sch.mouth)] += rng.normal(0, 4, (len(sch.mouth), 2))
    m = landmark_distances(only_mouth, gt, name)
    assert m["ald_m"] - before["ald_m"] > 2.0
    assert abs(m["ald_e"] - before["ald_e"]) < 0.1 * (m["ald_m"] - before["ald_m"])


def test_hand_computed_square():
    gt = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    # pure translation: L2-LD = 5 (3-4-5 triangle), ALD = 0
    np.testing.assert_allclose(fit_affine(gt + [3, 4], gt)[1], [-3, -4], atol=1e-12)
    # unit-square P, Q = P with corner 2 moved by 1 px along x. The residual of a least-squares fit over design
    # matrix [x, y, 1] of the square is the projection onto its null complement (1, -1, 1, -1) / 2, i.e. 1/4 per point.
    moved = gt.copy()
    moved[2, 0] += 1.0
    a, t = fit_affine(gt, moved)
    res = gt @ a.T + t - moved
    np.testing.assert_allclose(res[:, 0], [-0.25, 0.25, -0.25, 0.25], atol=1e-12)
    np.testing.assert_allclose(res[:, 1], 0, atol=1e-12)


def test_hand_computed_scheme_case():
    """68 points, 1 px translation plus one mouth point moved: known L2-LD and region means."""
    rng = np.random.default_rng(3)
    gt = _random_face(rng, 68)
    pred = gt + [1.0, 0.0]
    r = landmark_distances(pred, gt, "dlib68")
    assert r["l2_ld"] == pytest.approx(1.0)
    assert r["ald"] < 1e-9
    pred2 = gt.copy()
    pred2[:, 0] += 3.0
    pred2[:, 1] += 4.0
    assert landmark_distances(pred2, gt, "ins68")["l2_ld"] == pytest.approx(5.0)


def test_sum_hypothesis_is_region_sums_of_affine_residuals_with_wflw_sizes():
    """wflw98: ald_e_sum / ald_m_sum are the plain sums of the residuals after the affine fit over the 36 eye/brow/
    pupil and 20 lip points; other schemes keep that scale (region mean x 36 / x 20)."""
    rng = np.random.default_rng(5)
    gt = _random_face(rng, 98)
    pred = gt @ np.array([[1.1, 0.2], [-0.1, 0.9]]).T + rng.normal(0, 1.5, gt.shape)
    r = landmark_distances(pred, gt, "wflw98")
    res = np.linalg.norm(apply_affine(pred, *fit_affine(pred, gt)) - gt, axis=-1)
    scheme = get_scheme("wflw98")
    assert (len(scheme.eyes), len(scheme.mouth)) == (36, 20)
    assert r["ald_e_sum"] == pytest.approx(res[scheme.eyes_index].sum(), rel=1e-12)
    assert r["ald_m_sum"] == pytest.approx(res[scheme.mouth_index].sum(), rel=1e-12)
    assert r["ald_e"] == pytest.approx(res[scheme.eyes_index].mean(), rel=1e-12)  # ours stays the mean
    g68, p68 = gt[:68], pred[:68]
    r68 = landmark_distances(p68, g68, "dlib68")
    assert r68["ald_e_sum"] == pytest.approx(36 * r68["ald_e"]) and r68["ald_m_sum"] == pytest.approx(20 * r68["ald_m"])


def test_batch_equals_single_and_nan_rows():
    rng = np.random.default_rng(4)
    gt = rng.uniform(0, 512, (6, 106, 2))
    pred = gt + rng.normal(0, 2, gt.shape)
    pred[3] = np.nan  # no face found on restored image 3
    batch = landmark_distances(pred, gt, "ins106")
    for i in range(6):
        single = landmark_distances(pred[i], gt[i], "ins106")
        for k in ("l2_ld", "ald", "ald_e", "ald_m", "ald_e_sum", "ald_m_sum"):
            if i == 3:
                assert np.isnan(batch[k][i]) and np.isnan(single[k])
            else:
                assert batch[k][i] == pytest.approx(single[k], rel=1e-12)
    assert isinstance(single["ald"], float) and batch["ald"].shape == (6,)


def test_chunking_matches_unchunked(monkeypatch):
    from honestface_core.metrics import landmark_distance as ld

    rng = np.random.default_rng(5)
    gt = rng.uniform(0, 512, (1300, 98, 2))
    pred = gt + rng.normal(0, 2, gt.shape)
    a = landmark_distances(pred, gt, "wflw98")
    monkeypatch.setattr(ld, "_CHUNK", 10_000)
    b = landmark_distances(pred, gt, "wflw98")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12)


def test_rescaled_to_512():
    rng = np.random.default_rng(6)
    gt = rng.uniform(0, 1024, (98, 2))
    pred = gt + [8.0, 0.0]
    r = landmark_distances(pred, gt, "wflw98", image_size=1024)
    assert r["l2_ld"] == pytest.approx(4.0)
    r2 = landmark_distances(pred, gt, "wflw98", image_size=(1024, 256))
    assert r2["l2_ld"] == pytest.approx(4.0)


def test_collinear_points_do_not_crash():
    gt = np.stack([np.linspace(0, 100, 68), np.linspace(0, 50, 68)], -1)
    r = landmark_distances(gt + 1, gt, "dlib68")
    assert np.isfinite(r["ald"]) and r["ald"] < 1e-6


def test_region_tables():
    w, i, d = get_scheme("wflw98"), get_scheme("ins106"), get_scheme("dlib68")
    assert len(w.eyes) == 18 + 16 + 2 and w.mouth == tuple(range(76, 96))
    assert len(i.eyes) == 2 * (10 + 9) and i.mouth == tuple(range(52, 72))
    assert d.eyes == tuple(range(17, 27)) + tuple(range(36, 48)) and d.mouth == tuple(range(48, 68))
    for s in (w, i, d):
        assert not set(s.eyes) & set(s.mouth) and max(s.eyes + s.mouth) < s.num_points
    assert get_scheme(None, 106) is i and get_scheme("ins68") is d


@pytest.mark.parametrize(("pred", "gt", "scheme", "match"), [
    (np.zeros((68, 2)), np.zeros((98, 2)), None, "differ"),
    (np.zeros((68, 3)), np.zeros((68, 3)), None, "shape"),
    (np.zeros((50, 2)), np.zeros((50, 2)), None, "no known scheme"),
    (np.zeros((68, 2)), np.zeros((68, 2)), "wflw98", "has 98"),
    (np.zeros((68, 2)), np.zeros((68, 2)), "mediapipe", "unknown landmark scheme"),
])
def test_bad_input(pred, gt, scheme, match):
    with pytest.raises(HonestFaceError, match=match):
        landmark_distances(pred, gt, scheme)


def test_benchmark_script_runs():
    from honestface_core.metrics.bench_landmarks import run

    r = run(pairs=2000, scheme="ins106", repeats=1)
    assert r["pairs"] == 2000 and r["points"] == 106 and r["seconds"] > 0 and r["pairs_per_second"] > 0
