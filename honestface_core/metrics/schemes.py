"""Landmark schemes and their region index tables (0-based point indices).

Layouts (facts, checked against the public datasets/models):

- ``wflw98`` — WFLW 98 points, emitted by facexlib's AWing ``alignment_WFLW_4HG.pth``: 0-32 contour,
  33-41 and 42-50 the two brows, 51-59 nose, 60-67 and 68-75 the two eyes, 76-87 outer lips, 88-95 inner lips,
  96 and 97 the pupils.
- ``ins106`` — insightface ``2d106det``: 0-32 contour, 33-42 one eye, 43-51 its brow, 52-71 mouth (outer+inner
  lips), 72-86 nose, 87-96 the other eye, 97-105 its brow.
- ``ibug68`` (aliases ``ins68`` for insightface ``1k3d68`` and ``dlib68`` for dlib's predictor) — iBUG 300-W
  68 points: 0-16 jaw, 17-21 and 22-26 the brows, 27-35 nose, 36-41 and 42-47 the eyes, 48-59 outer lips,
  60-67 inner lips.

Regions as docs/evaluation.md defines them: **eyes = both eyes and both brows** (plus the WFLW pupils: they are
eye points, our choice), **mouth = outer and inner lips**.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from honestface_core.errors import HonestFaceError


@dataclass(frozen=True)
class LandmarkScheme:
    """A landmark layout: name, number of points and the eye/mouth index tables."""

    name: str
    num_points: int
    eyes: tuple[int, ...]
    mouth: tuple[int, ...]
    description: str
    # index runs drawn as connected polylines in overlays: (start, stop, closed)
    polylines: tuple[tuple[int, int, bool], ...] = ()

    @property
    def eyes_index(self) -> np.ndarray:
        return np.asarray(self.eyes, dtype=np.intp)

    @property
    def mouth_index(self) -> np.ndarray:
        return np.asarray(self.mouth, dtype=np.intp)


def _r(a: int, b: int) -> tuple[int, ...]:
    return tuple(range(a, b))


WFLW98 = LandmarkScheme(
    "wflw98", 98,
    eyes=_r(33, 51) + _r(60, 76) + (96, 97),
    mouth=_r(76, 96),
    description="WFLW 98 points (facexlib AWing alignment_WFLW_4HG.pth)",
    polylines=((0, 33, False), (33, 42, True), (42, 51, True), (51, 55, False), (55, 60, False),
               (60, 68, True), (68, 76, True), (76, 88, True), (88, 96, True)),
)
INS106 = LandmarkScheme(
    "ins106", 106,
    eyes=_r(33, 52) + _r(87, 106),
    mouth=_r(52, 72),
    description="insightface 2d106det 106 points",
)
IBUG68 = LandmarkScheme(
    "ibug68", 68,
    eyes=_r(17, 27) + _r(36, 48),
    mouth=_r(48, 68),
    description="iBUG 300-W 68 points (insightface 1k3d68, dlib shape_predictor_68_face_landmarks)",
    polylines=((0, 17, False), (17, 22, False), (22, 27, False), (27, 31, False), (31, 36, False),
               (36, 42, True), (42, 48, True), (48, 60, True), (60, 68, True)),
)

SCHEMES: dict[str, LandmarkScheme] = {
    "wflw98": WFLW98,
    "ins106": INS106,
    "ins68": IBUG68,
    "dlib68": IBUG68,
    "ibug68": IBUG68,
}
_BY_COUNT = {98: WFLW98, 106: INS106, 68: IBUG68}


def get_scheme(scheme: str | LandmarkScheme | None, num_points: int | None = None) -> LandmarkScheme:
    """Resolve a scheme by name (``wflw98``, ``ins106``, ``ins68``, ``dlib68``, ``ibug68``) or, when ``scheme`` is
    None, by the number of points (98, 106, 68). Checks ``num_points`` against the scheme."""
    if isinstance(scheme, LandmarkScheme):
        found = scheme
    elif scheme is None:
        found = _BY_COUNT.get(num_points)  # type: ignore[arg-type]
        if found is None:
            raise HonestFaceError("landmarks", f"{num_points} points match no known scheme",
                                  "Use 98 (WFLW), 106 (insightface) or 68 (iBUG/dlib) points, or pass a scheme")
    else:
        found = SCHEMES.get(str(scheme).lower())
        if found is None:
            raise HonestFaceError("scheme", f"unknown landmark scheme {scheme!r}", f"Use one of {sorted(SCHEMES)}")
    if num_points is not None and num_points != found.num_points:
        raise HonestFaceError("landmarks", f"{num_points} points given but scheme '{found.name}' has {found.num_points}",
                              "Pass landmarks of the matching detector or the matching scheme name")
    return found
