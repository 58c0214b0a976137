"""Landmark evaluation nodes: a landmark model loader and L2-LD / ALD / ALD-e / ALD-m / Deg / Ref-Deg of restored
vs ground-truth batches with a JSON report and a landmark overlay. (Identity similarity of any two batches is the
"Face Identity Similarity" node in ``identity.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.facexlib_models import AWING_FILE
from honestface_core.files.images import as_rgb_batch
from honestface_core.face.landmarks import DLIB68_FILE, DLIB68_FOLDER, AWingLandmarks, DlibLandmarks, InsightFaceLandmarks, \
    draw_landmark_overlay
from honestface_core.metrics.eval_crops import embed_references, eval_crops
from honestface_core.metrics.reports import batch_report
from honestface_core.metrics.scoring import score_crops
from honestface_core.files.model_paths import MODEL_FILES, bundled_model_path

from .declare import field, node
from .model_folders import check_choices, comfy_models
from .result_text import landmark_summary, ui_text
from .types import FACEANALYSIS, INSIGHTFACE_TOOLTIP, LANDMARKS, OPENCV_FACE, OPENCV_TOOLTIP, pick_detector, pick_encoder

NODE = "HonestFace Landmark Evaluation"
INPUT_KINDS = ["aligned crops", "detect and align (ground truth's face)"]  # lists: ComfyUI checks list choices
INSIGHTFACE_SCHEMES = ["ins106 (2d106det)", "ins68 (1k3d68)"]
#: the report columns of the FLOAT outputs l2_ld, ald, ald_e, ald_m, deg, ref_deg
OUTPUT_COLUMNS = ("L2-LD", "ALD (ours)", "ALD-e (ours)", "ALD-m (ours)", "Deg.", "Ref-Deg")


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


def _check_square(images: torch.Tensor, name: str) -> None:
    """'aligned crops' must be square (they are rescaled to 512 for the metrics and the overlay)."""
    if images.shape[1] != images.shape[2]:
        raise HonestFaceError(f"{NODE}: '{name}'", f"images are {images.shape[2]}x{images.shape[1]}, not square crops",
                              "Connect aligned crops (Detect Faces, a restorer), or choose 'detect and align'")


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
        if input_kind == "aligned crops":
            detector = None
            _check_square(restored, "restored")
            _check_square(ground_truth, "ground_truth")
        else:
            if not has_id:
                raise HonestFaceError(f"{NODE}: input_kind", "'detect and align' needs a face detector",
                                      "Connect an OpenCV or insightface loader, or pass aligned crops")
            detector = pick_detector(NODE, insightface=insightface, opencv=opencv)
            _check_same_frame(restored, ground_truth)
        bar = comfy.utils.ProgressBar(4)
        crops = eval_crops(restored, ground_truth, detector, "ground_truth", mm.throw_exception_if_processing_interrupted)
        bar.update_absolute(1)
        notes, refs = crops.notes, None
        if references is not None and encoder is not None:
            references = as_rgb_batch(references, "references")
            if detector is None:
                _check_square(references, "references")
            refs, missing = embed_references(references, encoder, detector, mm.throw_exception_if_processing_interrupted)
            notes += [f"reference {i}: no face found, skipped" for i in missing]
        mm.throw_exception_if_processing_interrupted()
        scores = score_crops(crops.restored, crops.gt, lm, encoder, refs)
        bar.update_absolute(3)
        report = batch_report(scores, crops.no_face, getattr(lm, "name", type(lm).__name__),
                              getattr(encoder, "name", "none") if encoder is not None else "none", input_kind, notes)
        text = json.dumps(report, indent=1)
        overlay = draw_landmark_overlay(crops.restored, scores.gt_landmarks, scores.pred_landmarks)
        bar.update_absolute(4)
        means = [report["mean"].get(col) for col in OUTPUT_COLUMNS]
        result = (*(-1.0 if m is None else m for m in means), text, overlay)  # -1: not computed
        return {"ui": ui_text(text, landmark_summary(report)), "result": result}
