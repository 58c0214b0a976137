"""Landmark evaluation nodes: a landmark model loader and L2-LD / ALD / ALD-e / ALD-m / Deg / Ref-Deg of restored
vs ground-truth batches with a JSON report and a landmark overlay. (Identity similarity of any two batches is the
"Face Identity Similarity" node in ``identity.py``.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import numpy as np
import torch

from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import detect_faces
from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.facexlib_models import AWING_FILE
from honestface_core.face.identity import embed_largest_faces
from honestface_core.files.images import as_rgb_batch
from honestface_core.face.landmarks import DLIB68_FILE, DLIB68_FOLDER, AWingLandmarks, DlibLandmarks, InsightFaceLandmarks, \
    draw_landmark_overlay
from honestface_core.metrics.evaluate import REPORT_NAMES, CropScores, nanmean, score_crops
from honestface_core.files.model_paths import MODEL_FILES, bundled_model_path

from .declare import field, node
from .model_folders import check_choices, comfy_models
from .result_text import landmark_summary, ui_text
from .types import FACEANALYSIS, INSIGHTFACE_TOOLTIP, OPENCV_FACE, OPENCV_TOOLTIP, pick_detector, pick_encoder

LANDMARKS = "HONESTFACE_LANDMARKS"
NODE = "HonestFace Landmark Evaluation"
INPUT_KINDS = ["aligned crops", "detect and align (ground truth's face)"]  # lists: ComfyUI checks list choices
INSIGHTFACE_SCHEMES = ["ins106 (2d106det)", "ins68 (1k3d68)"]
EVAL_SIZE = 512


def dlib_file() -> Path | None:
    """``models/landmarks/shape_predictor_68_face_landmarks.dat``, else the face-recognition-models copy, else None."""
    full = folder_paths.get_full_path(DLIB68_FOLDER, DLIB68_FILE)
    return Path(full) if full else bundled_model_path(DLIB68_FILE)


# landmark model choice -> (file, folder)
LANDMARK_FILES = {"dlib68": (DLIB68_FILE, DLIB68_FOLDER), "wflw98": (AWING_FILE, "facexlib")}


def landmark_choices() -> list[str]:
    """The landmark models whose file exists (dlib68 also inside face-recognition-models)."""
    return (["dlib68"] * (dlib_file() is not None)
            + ["wflw98"] * (AWING_FILE in folder_paths.get_filename_list("facexlib")))


@node("HonestFaceLandmarkLoader", "HonestFace Landmark Model Loader", "HonestFace/loaders", "load",
      "Loads a dense landmark model for the landmark metrics: dlib's 68-point predictor (iBUG scheme; models/landmarks "
      "or the copy in the face-recognition-models package, needs dlib-bin) or facexlib's AWing 98-point WFLW model "
      "(models/facexlib/alignment_WFLW_4HG.pth, the detector prior work used). For insightface's 106/68-point models "
      "connect an insightface loader to the evaluation node instead.",
      required={"model": field(landmark_choices, f"dlib68: {DLIB68_FILE} (68 iBUG points); wflw98: {AWING_FILE} (98 "
                               "WFLW points, facexlib AWing). Only those found are listed.")},
      outputs=[(LANDMARKS, "landmark_model", "A landmark detector for aligned face crops.")])
class LandmarkLoader:
    @classmethod
    def VALIDATE_INPUTS(cls, model: str):
        filename, folder = LANDMARK_FILES.get(model, (model, DLIB68_FOLDER))
        known = next((m for m in MODEL_FILES if m.filename == filename), None)
        return check_choices(("model", model, landmark_choices(), filename, folder, known.source if known else ""))

    def load(self, model: str):
        if model == "dlib68":
            path = dlib_file()
            if path is None:
                known = next(m for m in MODEL_FILES if m.filename == DLIB68_FILE)
                raise MissingModelError(DLIB68_FILE, " or ".join(folder_paths.get_folder_paths(DLIB68_FOLDER)), known.source)
            return (DlibLandmarks(path),)
        return (AWingLandmarks.from_models_dir(comfy_models(), mm.get_torch_device()),)


def _prepare(images: torch.Tensor, name: str, kind: str, faces=None) -> tuple[torch.Tensor, list[int]]:
    """Aligned 512 crops of a batch and the batch indices without a face. In detect mode ``faces`` (one per
    image, None where no face) give the transforms."""
    images = as_rgb_batch(images, name)
    if kind == "aligned crops":
        if images.shape[1] != images.shape[2]:
            raise HonestFaceError(f"{NODE}: '{name}'", f"images are {images.shape[2]}x{images.shape[1]}, not square crops",
                                  "Connect aligned crops (Detect Faces, a restorer), or choose 'detect and align'")
        if images.shape[1] != EVAL_SIZE:  # landmarks are rescaled to 512 anyway; resize for one overlay size
            images = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(EVAL_SIZE, EVAL_SIZE), mode="bicubic",
                                                     antialias=True, align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
        return images, []
    missing = [i for i, f in enumerate(faces) if f is None]
    crops = images.new_zeros((images.shape[0], EVAL_SIZE, EVAL_SIZE, 3))
    have = [f for f in faces if f is not None]
    if have:
        crops[[f.image_index for f in have]] = align_faces(images, have, EVAL_SIZE).crops
    return crops, missing


def _check_same_frame(restored: torch.Tensor, ground_truth: torch.Tensor) -> None:
    """In 'detect and align' mode the ground truth's face transform also aligns the restored image, so the two must
    show the same frame: equal sizes, or the same aspect ratio to one pixel (a restorer's 2x / 4x output), which is
    rescaled to the ground truth's size. Other sizes would silently misalign every landmark: refused."""
    (rh, rw), (gh, gw) = restored.shape[1:3], ground_truth.shape[1:3]
    if abs(rh * gw - gh * rw) > max(gw, rw):  # more than one pixel off a uniform scale in either image
        raise HonestFaceError(f"{NODE}: restored / ground_truth", f"restored images are {rw}x{rh} and ground-truth "
                              f"images {gw}x{gh}: not the same frame (different aspect ratios), so the ground truth's "
                              "face alignment would not fit the restored image",
                              "Pass restored images of the ground truth's size (or a uniform 2x / 4x of it), or "
                              "aligned crops of both with input_kind 'aligned crops'")


def _mean(values: np.ndarray | None) -> float:
    """Mean over the finite values; -1.0 when there is none (not computed)."""
    if values is None:
        return -1.0
    m = nanmean(values.tolist())
    return m if math.isfinite(m) else -1.0


@node("HonestFaceLandmarkEvaluation", "HonestFace Landmark Evaluation", "HonestFace/evaluation", "evaluate",
      "Compares restored faces with their ground truth: L2-LD (mean landmark distance), ALD, ALD-e and ALD-m, "
      "labelled '(ours)' (the distances left after the best affine fit, over all / eye+brow / lip points; our "
      "definition, not the paper's unpublished formula), Deg. (identity angle to the ground truth) and Ref-Deg (angle "
      "to the mean of the references), plus PSNR/SSIM on Y. Units: pixels of a 512 crop. Outputs the means (-1 = not "
      "computed), a JSON report shown on the node with per-image values and the images without a face (never "
      "dropped), and an overlay of both landmark sets.",
      required={
          "restored": field("IMAGE", "Restored faces (aligned crops or photos), one per ground-truth image."),
          "ground_truth": field("IMAGE", "Ground-truth faces, same count and order as 'restored'."),
          "input_kind": field(INPUT_KINDS, "'aligned crops': both batches are FFHQ-aligned crops (other sizes are "
                              "rescaled to 512); 'detect and align': the largest face of each ground truth is detected "
                              "and the same transform aligns both images (our choice: a global shift of the "
                              "restoration stays visible in L2-LD); restored images need the ground truth's size or "
                              "aspect ratio."),
          "insightface_scheme": field(INSIGHTFACE_SCHEMES, "Landmark model used when the landmarks come from the "
                                      "insightface input (its pack must contain it)."),
      },
      optional={
          "landmark_model": field(LANDMARKS, "Landmark detector (HonestFace Landmark Model Loader). If not connected, "
                                  "insightface's landmark model is used."),
          "insightface": field(FACEANALYSIS, INSIGHTFACE_TOOLTIP + " Gives ArcFace Deg. (the paper's), the detector, "
                               "and 106/68-point landmarks."),
          "opencv": field(OPENCV_FACE, OPENCV_TOOLTIP + " Gives the detector and SFace Deg. (not comparable with the "
                          "paper's ArcFace numbers)."),
          "references": field("IMAGE", "Reference photos/crops of the person (same input kind) for Ref-Deg."),
      },
      outputs=[("FLOAT", "l2_ld", "Mean L2 landmark distance (px of a 512 crop)."),
               ("FLOAT", "ald", "Mean ALD (ours) over all points."),
               ("FLOAT", "ald_e", "Mean ALD (ours) over the eye and brow points."),
               ("FLOAT", "ald_m", "Mean ALD (ours) over the lip points."),
               ("FLOAT", "deg", "Mean identity angle restored vs ground truth (degrees; -1 without an identity "
                "model)."),
               ("FLOAT", "ref_deg", "Mean identity angle restored vs the references' mean (degrees; -1 without "
                "references)."),
               ("STRING", "report", "JSON report: per-image values, means, scheme, encoder, images without "
                "face/landmarks."),
               ("IMAGE", "overlay", "Restored crops with ground-truth (green) and restored (red) landmarks.")],
      output_node=True)
class LandmarkEvaluation:
    def evaluate(self, restored, ground_truth, input_kind, insightface_scheme, landmark_model=None, insightface=None,
                 opencv=None, references=None):
        restored = as_rgb_batch(restored, "restored")
        ground_truth = as_rgb_batch(ground_truth, "ground_truth")
        if restored.shape[0] != ground_truth.shape[0]:
            raise HonestFaceError(f"{NODE}: restored / ground_truth", f"{restored.shape[0]} restored and "
                                  f"{ground_truth.shape[0]} ground-truth images", "Pass one ground-truth image per restored image")
        if landmark_model is None and insightface is None:
            raise HonestFaceError(f"{NODE}: landmark_model", "no landmark source is connected",
                                  "Connect a HonestFace Landmark Model Loader (dlib68 works without downloads) or an insightface loader")
        lm = landmark_model or InsightFaceLandmarks(insightface, insightface_scheme.split()[0])
        has_id = insightface is not None or opencv is not None
        encoder = pick_encoder(NODE, insightface=insightface, opencv=opencv) if has_id else None
        notes = []
        if input_kind == "aligned crops":
            detector = None
            notes += [f"{name} crops {t.shape[2]}x{t.shape[1]} rescaled to {EVAL_SIZE}x{EVAL_SIZE}"
                      for name, t in (("restored", restored), ("ground_truth", ground_truth)) if t.shape[1] != EVAL_SIZE]
        else:
            if not has_id:
                raise HonestFaceError(f"{NODE}: input_kind", "'detect and align' needs a face detector",
                                      "Connect an OpenCV or insightface loader, or pass aligned crops")
            detector = pick_detector(NODE, insightface=insightface, opencv=opencv)
            if restored.shape[1:3] != ground_truth.shape[1:3]:
                _check_same_frame(restored, ground_truth)
                notes.append(f"restored {restored.shape[2]}x{restored.shape[1]} resized to the ground truth's "
                             f"{ground_truth.shape[2]}x{ground_truth.shape[1]}")
                restored = torch.nn.functional.interpolate(restored.permute(0, 3, 1, 2), size=ground_truth.shape[1:3],
                                                           mode="bicubic", antialias=True, align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
        bar = comfy.utils.ProgressBar(4)
        faces = None
        if detector is not None:
            found = {f.image_index: f for f in detect_faces(detector, ground_truth, "largest",
                                                           interrupt=mm.throw_exception_if_processing_interrupted)}
            faces = [found.get(i) for i in range(ground_truth.shape[0])]
        gt_crops, no_face = _prepare(ground_truth, "ground_truth", input_kind, faces)
        rs_crops, _ = _prepare(restored, "restored", input_kind, faces)
        bar.update_absolute(1)
        refs = None
        if references is not None and encoder is not None:
            if detector is None:
                refs = encoder.embed(_prepare(references, "references", input_kind)[0])
            else:
                found = embed_largest_faces(as_rgb_batch(references, "references"), detector, encoder, EVAL_SIZE,
                                            interrupt=mm.throw_exception_if_processing_interrupted)
                notes += [f"reference {i}: no face found, skipped" for i in found.missing]
                refs = found.embeddings if found.image_index else None
        mm.throw_exception_if_processing_interrupted()
        scores: CropScores = score_crops(rs_crops, gt_crops, lm, encoder, refs)
        bar.update_absolute(3)
        for col in scores.values:
            scores.values[col][no_face] = np.nan
        no_lmk = [i for i in np.flatnonzero(~scores.landmarks_found).tolist() if i not in no_face]
        report = {
            "scheme": scores.scheme, "landmark_model": getattr(lm, "name", type(lm).__name__),
            "identity_encoder": getattr(encoder, "name", "none") if encoder is not None else "none",
            "input_kind": input_kind, "units": "pixels of a 512x512 aligned crop",
            "images": int(restored.shape[0]), "no_face_images": no_face, "no_landmarks_images": no_lmk,
            "mean": {REPORT_NAMES.get(col, col): _json_float(nanmean(v.tolist())) for col, v in scores.values.items()},
            "per_image": {REPORT_NAMES.get(col, col): [_json_float(x) for x in v.tolist()] for col, v in scores.values.items()},
            "notes": notes,
        }
        text = json.dumps(report, indent=1)
        overlay = draw_landmark_overlay(rs_crops, scores.gt_landmarks, scores.pred_landmarks)
        bar.update_absolute(4)
        v = scores.values
        result = (_mean(v["L2-LD"]), _mean(v["ALD"]), _mean(v["ALD-e"]), _mean(v["ALD-m"]), _mean(v.get("Deg.")),
                  _mean(v.get("Ref-Deg")), text, overlay)
        return {"ui": ui_text(text, landmark_summary(report)), "result": result}


def _json_float(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None

