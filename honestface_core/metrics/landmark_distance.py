"""L2-LD, ALD, ALD-e and ALD-m between two landmark sets (docs/evaluation.md, "The metrics"), vectorised over a batch.

ALD is our definition (the paper's formula is not available): fit the least-squares 2-D affine map from the
restored landmarks P to the ground-truth landmarks Q over all points, apply it, and average the remaining
point distances over all points (ALD), the eye+brow points (ALD-e) or the lip points (ALD-m). L2-LD is the plain
mean distance without the fit. Coordinates are pixels of a 512x512 aligned crop; other sizes are rescaled to 512.

Hypothesis (ours, never the paper's numbers): the paper's ALD-e / ALD-m scale fits region *sums* of the same
residuals better than means. ``ald_e_sum`` / ``ald_m_sum`` are the region means times the WFLW region sizes (36 eye,
brow and pupil points, 20 lip points): the plain sums for ``wflw98``, the same scale for the other schemes
(docs/evaluation.md, "ALD scale").
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.schemes import WFLW98, LandmarkScheme, get_scheme

EVAL_SIZE = 512
Size = Union[float, Sequence[float], None]


def rescale_landmarks(points, from_size: Size, to_size: float = EVAL_SIZE) -> np.ndarray:
    """Scale pixel coordinates from an image of ``from_size`` (side, or ``(width, height)``) to ``to_size``."""
    pts = np.asarray(points, dtype=np.float64)
    if from_size is None:
        return pts
    w, h = (from_size, from_size) if np.isscalar(from_size) else tuple(from_size)  # type: ignore[misc]
    if w <= 0 or h <= 0:
        raise HonestFaceError("image size", f"{from_size!r} is not a positive size", "Pass the width/height in pixels")
    return pts * np.array([to_size / w, to_size / h])


def _as_points(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[-1] != 2:
        raise HonestFaceError(name, f"landmarks have shape {arr.shape}", "Pass an (N, 2) or (B, N, 2) array of (x, y)")
    return arr


def fit_affine(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine map from ``pred`` to ``gt``; both ``(B, N, 2)``.

    Returns ``(A, t)`` with ``A`` ``(B, 2, 2)`` and ``t`` ``(B, 2)`` so that ``pred @ A.T + t`` ~ ``gt``
    (no batch axis for ``(N, 2)`` input).
    Degenerate (collinear) point sets use the pseudo-inverse (minimum-norm fit). NaN inputs give NaN maps.
    """
    p = _as_points(pred, "pred")
    q = _as_points(gt, "gt")
    single = p.ndim == 2
    if single:
        p, q = p[None], q[None]
    mp = p.mean(axis=-2, keepdims=True)
    mq = q.mean(axis=-2, keepdims=True)
    pc, qc = p - mp, q - mq
    s = np.swapaxes(pc, -1, -2) @ pc
    m = _solve_2x2(s[:, 0, 0], s[:, 0, 1], s[:, 1, 1], np.swapaxes(pc, -1, -2) @ qc)  # pc @ m ~ qc
    a = np.swapaxes(m, -1, -2)
    t = mq[:, 0, :] - (mp @ m)[:, 0, :]
    return (a[0], t[0]) if single else (a, t)


def apply_affine(points, a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Apply ``(A, t)`` from :func:`fit_affine` to ``points`` ``(..., N, 2)``."""
    pts = np.asarray(points, dtype=np.float64)
    x, y = pts[..., 0], pts[..., 1]
    a = a[..., None, :, :]
    return np.stack([a[..., 0, 0] * x + a[..., 0, 1] * y + t[..., None, 0],
                     a[..., 1, 0] * x + a[..., 1, 1] * y + t[..., None, 1]], -1)


def landmark_distances(pred, gt, scheme: str | LandmarkScheme | None = None,
                       image_size: Size = None) -> dict[str, float | np.ndarray]:
    """L2-LD, ALD, ALD-e and ALD-m (ours) and the hypothesis columns between predicted (restored) and ground-truth landmarks.

    Args:
        pred: restored-face landmarks, ``(N, 2)`` or ``(B, N, 2)`` pixel ``(x, y)``.
        gt: ground-truth landmarks of the same shape.
        scheme: ``wflw98``, ``ins106``, ``ins68``/``dlib68``/``ibug68``; None infers it from N (98, 106, 68).
        image_size: side (or ``(width, height)``) of the image the landmarks are in; they are rescaled to 512.
            None means they already are 512-crop pixels.

    Returns:
        ``{"l2_ld", "ald", "ald_e", "ald_m", "ald_e_sum", "ald_m_sum"}``: floats for ``(N, 2)`` input, ``(B,)``
        arrays for a batch. ``ald_e_sum`` / ``ald_m_sum`` = ``ald_e`` x 36 / ``ald_m`` x 20 (WFLW region sizes; our
        hypothesis of the paper's scale). A pair with any NaN coordinate (no face / no landmarks) gives NaN for all.
    """
    p = _as_points(pred, "pred")
    q = _as_points(gt, "gt")
    if p.shape != q.shape:
        raise HonestFaceError("landmarks", f"restored {p.shape} and ground truth {q.shape} differ",
                              "Detect both with the same landmark scheme and pass equally many faces")
    sch = get_scheme(scheme, p.shape[-2])
    single = p.ndim == 2
    if image_size is not None:
        p, q = rescale_landmarks(p, image_size), rescale_landmarks(q, image_size)
    if single:
        p, q = p[None], q[None]
    out = {k: np.empty(len(p)) for k in ("l2_ld", "ald", "ald_e", "ald_m")}
    for i in range(0, len(p), _CHUNK):
        part = _distances(p[i:i + _CHUNK], q[i:i + _CHUNK], sch.eyes_index, sch.mouth_index)
        for k, v in part.items():
            out[k][i:i + _CHUNK] = v
    out["ald_e_sum"] = out["ald_e"] * len(WFLW98.eyes)
    out["ald_m_sum"] = out["ald_m"] * len(WFLW98.mouth)
    if single:
        return {k: float(v[0]) for k, v in out.items()}
    return out


_CHUNK = 512  # pairs per step: keeps the working set in CPU cache (about 3x faster than one pass over 100k pairs)


def _distances(p: np.ndarray, q: np.ndarray, eyes: np.ndarray, mouth: np.ndarray) -> dict[str, np.ndarray]:
    """Core of :func:`landmark_distances` on ``(B, N, 2)`` float64, in x/y planes for contiguous memory access."""
    px, py = np.ascontiguousarray(p[..., 0]), np.ascontiguousarray(p[..., 1])
    qx, qy = np.ascontiguousarray(q[..., 0]), np.ascontiguousarray(q[..., 1])
    mpx, mpy = px.mean(-1, keepdims=True), py.mean(-1, keepdims=True)
    mqx, mqy = qx.mean(-1, keepdims=True), qy.mean(-1, keepdims=True)
    missing = np.isnan(mpx + mpy + mqx + mqy)[:, 0]  # a NaN anywhere makes its set's mean NaN
    if missing.any():
        for arr in (px, py, qx, qy, mpx, mpy, mqx, mqy):
            arr[missing] = 0.0
    dx, dy = px - qx, py - qy
    l2 = np.sqrt(dx * dx + dy * dy).mean(-1)
    x, y, u, v = px - mpx, py - mpy, qx - mqx, qy - mqy
    sxx, sxy, syy = np.einsum("bn,bn->b", x, x), np.einsum("bn,bn->b", x, y), np.einsum("bn,bn->b", y, y)
    sxu, sxv = np.einsum("bn,bn->b", x, u), np.einsum("bn,bn->b", x, v)
    syu, syv = np.einsum("bn,bn->b", y, u), np.einsum("bn,bn->b", y, v)
    m = _solve_2x2(sxx, sxy, syy, np.stack([np.stack([sxu, sxv], -1), np.stack([syu, syv], -1)], -2))
    # residual of the fitted map in centred coordinates: (x, y) @ m - (u, v)
    rx = x * m[:, None, 0, 0] + y * m[:, None, 1, 0] - u
    ry = x * m[:, None, 0, 1] + y * m[:, None, 1, 1] - v
    err = np.sqrt(rx * rx + ry * ry)
    out = {"l2_ld": l2, "ald": err.mean(-1), "ald_e": err[:, eyes].mean(-1), "ald_m": err[:, mouth].mean(-1)}
    if missing.any():
        for val in out.values():
            val[missing] = np.nan
    return out


def _solve_2x2(sxx: np.ndarray, sxy: np.ndarray, syy: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``[[sxx, sxy], [sxy, syy]] @ m = rhs`` per item; pseudo-inverse where the matrix is singular
    (collinear points: minimum-norm least-squares fit)."""
    det = sxx * syy - sxy * sxy
    ok = det > 1e-12 * (sxx + syy) ** 2
    safe = np.where(ok, det, 1.0)
    inv = np.stack([np.stack([syy, -sxy], -1), np.stack([-sxy, sxx], -1)], -2) / safe[:, None, None]
    bad = ~ok & np.isfinite(det)
    if bad.any():
        s = np.stack([np.stack([sxx, sxy], -1), np.stack([sxy, syy], -1)], -2)
        inv[bad] = np.linalg.pinv(s[bad])
    return inv @ rhs
