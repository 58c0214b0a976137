"""Readable text results shown on the nodes (the pack's web extension, ``web/honestface.js``, draws them).

A node's ``ui`` dict carries ``text``: its text result (status lines, or the JSON report, as before, for scripts
reading ``/history``); nodes with a JSON report also send ``summary``, the readable lines shown on the node with
the JSON folded under them. The summaries are one line per face or pair plus a mean line
(our choice of layout; see docs/nodes.md, "What the nodes show").
"""

from __future__ import annotations

import math

MAX_LINES = 24  # longer summaries end with "... N more" (the JSON report keeps every value)
LANDMARK_COLUMNS = (("L2-LD", "L2-LD"), ("ALD (ours)", "ALD (ours)"), ("ALD-e (ours)", "eyes"), ("ALD-m (ours)", "mouth"),
                    ("Deg.", "Deg"), ("Ref-Deg", "Ref-Deg"))


def ui_text(text: str, summary: str | None = None) -> dict:
    """The ``ui`` dict of a node result: its ``text`` and, for a JSON report, the readable ``summary``."""
    ui = {"text": [text]}
    if summary is not None:
        ui["summary"] = [summary]
    return ui


def _num(x: float | None, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.2f}{unit}"


def _clip(lines: list[str], head: int) -> list[str]:
    """``lines[:head]`` (headers) and at most :data:`MAX_LINES` of the lines after them."""
    body = lines[head:]
    if len(body) > MAX_LINES:
        body = body[:MAX_LINES - 1] + [f"... {len(body) - MAX_LINES + 1} more (see the report output)"]
    return lines[:head] + body


def _scores(values: dict[str, float | None]) -> str:
    parts = []
    for column, label in LANDMARK_COLUMNS:
        if column in values:
            parts.append(f"{label} {_num(values[column], '°' if 'Deg' in column else '')}")
    return "  ".join(parts)


def landmark_summary(report: dict) -> str:
    """Landmark Evaluation: the scheme and encoder, one line per image, the mean over the images with a face."""
    no_face, no_lmk = set(report["no_face_images"]), set(report["no_landmarks_images"])
    columns = [c for c, _ in LANDMARK_COLUMNS if c in report["per_image"]]
    model = "" if report["landmark_model"] == report["scheme"] else f" ({report['landmark_model']})"
    lines = [f"{report['scheme']} landmarks{model}, identity: {report['identity_encoder']}; px of a 512 crop, "
             "lower is better"]
    for i in range(report["images"]):
        if i in no_face:
            lines.append(f"image {i}: no face found in the ground truth")
        elif i in no_lmk:
            lines.append(f"image {i}: no landmarks found")
        else:
            lines.append(f"image {i}: " + _scores({c: report["per_image"][c][i] for c in columns}))
    scored = report["images"] - len(no_face | no_lmk)
    lines = _clip(lines, 1)
    lines.append(f"mean of {scored}/{report['images']}: " + _scores({c: report["mean"][c] for c in columns}))
    return "\n".join(lines)


def similarity_summary(report: dict, within: bool, mean_similarity: float, mean_deg: float) -> str:
    """Identity Similarity: one line per compared pair (cosine and angle), then the means. ``within``: the pairs
    are within one batch (each pair once)."""
    rows, cols, cos, deg = report["rows"], report["columns"], report["cosine"], report["deg"]
    name_b = "image" if within else "b"
    lines = [f"{report['encoder']}: cosine similarity (higher = more alike), angle in degrees (lower = more alike)"]
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            if within and c <= r:
                continue
            lines.append(f"image {row} vs {name_b} {col}: cos {cos[r][c]:.3f}  {deg[r][c]:.1f}°")
    lines = _clip(lines, 1)
    lines.append(f"mean: cos {mean_similarity:.3f}  {mean_deg:.1f}°")
    missing = report["no_face_images"] + [f"b {i}" for i in report["no_face_images_b"]]
    if missing:
        lines.append("no face: image " + ", ".join(str(m) for m in missing))
    return "\n".join(lines)


def quality_summary(report: dict) -> str:
    """Image Quality: the metric, one score per image, the mean."""
    lines = [f"{report['metric']} (higher is better)"]
    lines += [f"image {i}: {_num(s)}" for i, s in enumerate(report["scores"])]
    lines = _clip(lines, 1)
    lines.append(f"mean: {_num(report['mean'])}")
    return "\n".join(lines)
