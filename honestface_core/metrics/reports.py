"""Evaluation reports: the report builders (a folder evaluation, a node's batch) and the report files (JSON, CSV,
Markdown), written through the one output writer (docs/evaluation.md, "Command line")."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.scoring import COLUMNS, REPORT_NAMES, CropScores, nanmean

NO_FACE = "no face found in ground truth"


def build_report(rows: list[dict], meta: dict, skipped: list[str], throughput: dict | None = None) -> dict:
    """The report of a folder evaluation: columns present, per-image rows, means over the finite values, FID over
    the set, failure counts and (when given) the throughput of the run."""
    from honestface_core.metrics.fid import frechet_distance

    rows = sorted(rows, key=lambda r: r["file"])
    feats = [r.pop("_inception") for r in rows if "_inception" in r]
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    mean = {c: nanmean([r.get(c) for r in rows]) for c in columns}
    if len(feats) >= 2:
        fr, fg = np.stack([f[0] for f in feats]), np.stack([f[1] for f in feats])
        mean["FID"] = frechet_distance(fr, fg)
        columns = [c for c in COLUMNS if c in columns or c == "FID"]
    elif feats:
        skipped = skipped + ["FID skipped: needs at least 2 evaluated images"]
    no_face = sum(r["status"] == NO_FACE for r in rows)
    no_lmk = sum(r["status"].startswith("no landmarks") for r in rows)
    report = {"meta": meta, "columns": columns, "images": len(rows), "evaluated": len(rows) - no_face - no_lmk,
              "no_face_found": no_face + no_lmk, "no_face_in_ground_truth": no_face, "no_landmarks_found": no_lmk,
              "mean": mean, "rows": rows, "skipped": skipped}
    if throughput is not None:
        report["throughput"] = throughput
    return report


def batch_report(scores: CropScores, no_face: list[int], landmark_model: str, identity_encoder: str,
                 input_kind: str, notes: list[str]) -> dict:
    """The Landmark Evaluation node's report of one batch: means and per-image values under the report names
    (6 decimals, None where not computable: every value of an image without a face), and the images without a
    face or landmarks (counted, never dropped)."""
    values = {REPORT_NAMES.get(col, col): v.astype(float) for col, v in scores.values.items()}
    for v in values.values():
        v[no_face] = np.nan
    no_lmk = [i for i in np.flatnonzero(~scores.landmarks_found).tolist() if i not in no_face]
    return {"scheme": scores.scheme, "landmark_model": landmark_model, "identity_encoder": identity_encoder,
            "input_kind": input_kind, "units": "pixels of a 512x512 aligned crop",
            "images": len(scores.pred_landmarks), "no_face_images": no_face, "no_landmarks_images": no_lmk,
            "mean": {col: _rounded(nanmean(v.tolist())) for col, v in values.items()},
            "per_image": {col: [_rounded(x) for x in v.tolist()] for col, v in values.items()}, "notes": notes}


def _rounded(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def throughput_line(throughput: dict) -> str:
    """``"20 pairs in 3.9 s: 5.13 pairs per second (models loaded in 1.2 s)"``."""
    return (f"{throughput['pairs']} pairs in {throughput['seconds']:.1f} s: {throughput['pairs_per_second']:.2f} "
            f"pairs per second (models loaded in {throughput['load_seconds']:.1f} s)")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def report_to_json(report: dict) -> str:
    """JSON text; NaN / inf (not computable) become null."""
    return json.dumps(_json_safe(report), indent=2)


def report_to_csv(report: dict) -> str:
    """CSV: ``file, status, <columns>, notes`` per image, then a ``mean`` row (its notes: the throughput)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = report["columns"]
    w.writerow(["file", "status", *cols, "notes"])
    for r in report["rows"]:
        w.writerow([r["file"], r["status"], *(_fmt(r.get(c)) for c in cols), "; ".join(r["notes"])])
    w.writerow(["mean", f"{report['evaluated']} evaluated, {report['no_face_found']} without face/landmarks",
                *(_fmt(report["mean"].get(c)) for c in cols),
                throughput_line(report["throughput"]) if "throughput" in report else ""])
    return buf.getvalue()


def report_to_markdown(report: dict) -> str:
    """Markdown: a summary, the means table, the per-image table and the skipped metrics."""
    cols, meta = report["columns"], report["meta"]
    speed = [f"- throughput: {throughput_line(report['throughput'])}"] if "throughput" in report else []
    lines = ["# HonestFace evaluation", "",
             f"- images: {report['images']}, evaluated: {report['evaluated']}, "
             f"no face found: {report['no_face_in_ground_truth']}, no landmarks found: {report['no_landmarks_found']}",
             *(f"- {k}: {v}" for k, v in meta.items()), *speed, "",
             "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|",
             "| **mean** | " + " | ".join(_fmt(report["mean"].get(c)) for c in cols) + " |", "",
             "| file | status | " + " | ".join(c for c in cols if c != "FID") + " | notes |",
             "|---" * (len([c for c in cols if c != "FID"]) + 3) + "|"]
    for r in report["rows"]:
        lines.append(f"| {r['file']} | {r['status']} | " + " | ".join(_fmt(r.get(c)) for c in cols if c != "FID")
                     + f" | {'; '.join(r['notes'])} |")
    if report["skipped"]:
        lines += ["", "Skipped:", *(f"- {s}" for s in report["skipped"])]
    return "\n".join(lines) + "\n"


REPORT_WRITERS = {".json": report_to_json, ".csv": report_to_csv, ".md": report_to_markdown}


def _report_writer(out: str | os.PathLike):
    suffix = Path(out).suffix.lower()
    if suffix not in REPORT_WRITERS:
        raise HonestFaceError(f"--out '{out}'", "has an unknown extension", "Use a .json, .csv or .md file name")
    return REPORT_WRITERS[suffix]


def check_report_path(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check a report path before any work: a known extension, not an existing file (unless ``overwrite``), not a
    symlink or folder, in a folder that is or can be created writable. Returns the absolute path."""
    from honestface_core.files.outputs import check_new_file

    _report_writer(out)
    return check_new_file(out, "--out", overwrite, "--overwrite")


def write_report(report: dict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``report`` as ``.json``, ``.csv`` or ``.md`` by the file's extension; an existing file is replaced
    only with ``overwrite`` (atomically), a symlink never."""
    from honestface_core.files.outputs import write_file

    text = _report_writer(out)(report)
    return write_file(out, text.encode("utf-8"), "--out", overwrite, "--overwrite")
