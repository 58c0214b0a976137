"""No-reference image quality nodes: a loader for the MUSIQ / CLIP-IQA / MANIQA weights and a node that scores
every image of a batch (the paper's MUSIQ, C-IQA and M-IQA columns)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.files.images import as_rgb_batch
from honestface_core.metrics.image_quality import MetricUnavailable
from honestface_core.metrics.iqa_files import pyiqa_cache_dir
from honestface_core.metrics.no_reference import describe, load_no_reference_metric, metric_choices

from .declare import field, node
from .result_text import quality_summary, ui_text

QUALITY_METRIC = "HONESTFACE_QUALITY_METRIC"


@node("HonestFaceQualityMetricLoader", "HonestFace Quality Metric Loader", "HonestFace/loaders", "load",
      "Loads a no-reference image quality metric from local weight files (nothing is downloaded): MUSIQ, C-IQA "
      "(CLIP-IQA) or M-IQA (MANIQA), each in the variants pyiqa publishes, giving pyiqa's numbers. Put the files in "
      f"models/iqa; files pyiqa already downloaded to {pyiqa_cache_dir()} are found too. A missing file stops with "
      "its exact name and folder.",
      required={"metric": field(metric_choices, "Metric (training set or variant). The first of each is the one the "
                                "face-restoration literature reports; see docs/evaluation.md for files.")},
      outputs=[(QUALITY_METRIC, "quality_metric", "A no-reference quality metric for the HonestFace Image Quality "
                "node.")])
class QualityMetricLoader:
    def load(self, metric: str):
        # every registered folder named "iqa" (extra_model_paths.yaml entries first), ComfyUI's models/iqa last
        roots = [Path(p).parent for p in folder_paths.get_folder_paths("iqa") if Path(p).name == "iqa"]
        roots = [r for r in roots if r != Path(folder_paths.models_dir)] + [Path(folder_paths.models_dir)]
        for root in roots:
            try:
                return (load_no_reference_metric(metric, root, mm.get_torch_device()),)
            except MetricUnavailable as err:
                missing = err
        raise HonestFaceError("HonestFace Quality Metric Loader", str(missing).replace(" skipped:", ":"),
                              "Nothing is downloaded automatically; see docs/evaluation.md for where to get it")


@node("HonestFaceImageQuality", "HonestFace Image Quality (MUSIQ / CLIP-IQA / MANIQA)", "HonestFace/evaluation",
      "score",
      "Scores every image of a batch with a no-reference quality metric (higher = better; MUSIQ about 0-100, "
      "CLIP-IQA 0-1, MANIQA about 0-1). Use it on restored faces (aligned crops) to compare restorers the way the "
      "paper's MUSIQ / C-IQA / M-IQA columns do. Outputs the mean and a JSON report with the score of every image, "
      "shown on the node.",
      required={
          "images": field("IMAGE", "Images to score (e.g. restored face crops); any size."),
          "quality_metric": field(QUALITY_METRIC, "From the HonestFace Quality Metric Loader."),
      },
      outputs=[("FLOAT", "mean_score", "Mean score over the batch."),
               ("STRING", "report", "JSON: metric, per-image scores, mean.")],
      output_node=True)
class ImageQuality:
    def score(self, images: torch.Tensor, quality_metric):
        images = as_rgb_batch(images, "images")
        bar = comfy.utils.ProgressBar(images.shape[0])
        scores = []
        for i in range(images.shape[0]):  # one at a time: progress, interrupt, bounded memory on large images
            mm.throw_exception_if_processing_interrupted()
            scores.append(float(quality_metric(images[i:i + 1])[0]))
            bar.update_absolute(i + 1)
        finite = [s for s in scores if math.isfinite(s)]
        mean = sum(finite) / len(finite) if finite else float("nan")
        report = {"metric": describe(quality_metric),
                  "images": len(scores), "scores": [round(s, 6) for s in scores], "mean": round(mean, 6)}
        text = json.dumps(report, indent=1)
        return {"ui": ui_text(text, quality_summary(report)), "result": (mean, text)}

