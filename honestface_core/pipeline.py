"""Restore aligned face crops with a loaded HonestFace model, and whole images end to end.

``restore_crops``: every face of a call goes through the VAE and the UNet as one batch (split into chunks only
when the device runs out of memory: the chunk is halved and retried). Each face may have its own reference set (or
none: blind); each set is encoded once per model (``HonestFaceModel.encode_references``, cached on the set) and the
faces' references are stacked into the one batch (padded to one K with a mask).

``restore_images``: detect -> align -> restore -> paste back; only the face crops travel to the model's device.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from honestface_core.face.alignment import AlignedFaces, align_faces, check_aligned_crops
from honestface_core.face.detection import (DetectedFace, FaceDetector, detect_faces, filter_faces, parse_selection,
                                            select_faces)
from honestface_core.errors import HonestFaceError
from honestface_core.files.images import as_rgb_batch
from honestface_core.face.pasteback import paste_faces
from honestface_core.face.identity import IdentityEncoder
from honestface_core.face.identity_library import DEFAULT_THRESHOLD, UNMATCHED, IdentityLibrary, IdentityMatch
from honestface_core.face.references import ReferenceSet
from honestface_core.model.reference_batch import EncodedReferences, ReferenceBatch, crops_to_model

MIN_CROP_SIZE = 64
CROP_SIZE_ADVICE = "Align faces at 512 pixels (the size the model restores)"

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Interrupt = Callable[[], None]


# ---------------------------------------------------------------------------------------------------------
# Tensors in the model's layout (crops_to_model: honestface_core.model.reference_batch)


def model_to_crops(x: torch.Tensor, size: int, like: torch.Tensor) -> torch.Tensor:
    """``(N, 3, R, R)`` [-1, 1] -> ``(N, S, S, 3)`` [0, 1] float32 on ``like``'s device."""
    x = x.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).to(like.device)


# ---------------------------------------------------------------------------------------------------------
# References


class BackboneIdentityEncoder:
    """Identity encoder (``references.prepare_references``) that uses the model's own frozen ArcFace backbone,
    so reference embeddings come from exactly the network the model was trained with and are computed on
    its device. Name ``"arcface:<backbone>"`` as insightface's encoder of the same file would have."""

    def __init__(self, model):
        if model.backbone is None:
            raise HonestFaceError("HonestFace model", "has no face backbone loaded",
                                  f"Load it with the insightface recogniser '{model.config.features.backbone}.onnx'")
        self.model = model
        self.name = f"arcface:{model.config.features.backbone}"
        self.dim = int(model.config.identity.embedding_dim)

    @torch.inference_mode()
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        crops = check_aligned_crops(crops, MIN_CROP_SIZE, CROP_SIZE_ADVICE).float()
        if crops.shape[0] == 0:
            return torch.zeros((0, self.dim), device=crops.device)
        x = crops.to(self.model.device).permute(0, 3, 1, 2) * 2 - 1
        return self.model.backbone.embed(x).float().to(crops.device)


FaceReferences = ReferenceSet | Sequence[ReferenceSet | None] | None
"""References of a call: one set for every face, one (or None = blind) per face, or None (all blind)."""


def encode_face_references(model, refs: FaceReferences, n: int) -> list[EncodedReferences | None] | None:
    """Each face's encoded references (:meth:`HonestFaceModel.encode_references`, cached on each set), or None when
    no face has any. Checked before any slow work."""
    if refs is None or isinstance(refs, ReferenceSet):
        per_face = [refs] * n
    elif isinstance(refs, Sequence) and not isinstance(refs, str):
        per_face = list(refs)
        wrong = [type(r).__name__ for r in per_face if r is not None and not isinstance(r, ReferenceSet)]
        if len(per_face) != n or wrong:
            problem = f"hold a {wrong[0]}" if wrong else f"are a list of {len(per_face)} entries for {n} faces"
            raise HonestFaceError("references", problem, "Give one reference set (or None = blind) per face, in the "
                                  "order of the crops, or one set for every face")
    else:
        raise HonestFaceError("references", f"are a {type(refs).__name__}, not a reference set",
                              "Give one reference set, one per face (None = blind), or none")
    per_face = [r if r is not None and len(r) else None for r in per_face]
    if all(r is None for r in per_face):
        return None
    if model.config.variant == "osdface":
        logger.warning("the OSDFace model restores blind; the references are ignored")
        return None
    for r in {id(r): r for r in per_face if r is not None}.values():
        model.check_references(r)
    return [None if r is None else model.encode_references(r) for r in per_face]


# ---------------------------------------------------------------------------------------------------------
# Restoring crops


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _restore_chunk(model, crops: torch.Tensor, encoded: list[EncodedReferences | None] | None) -> torch.Tensor:
    with torch.inference_mode():
        lq = crops_to_model(crops, model)
        refs = None if encoded is None else ReferenceBatch.from_encoded(encoded)
        return model_to_crops(model(lq, refs), crops.shape[1], crops)


def restore_crops(model, crops: torch.Tensor, refs: FaceReferences = None, chunk_size: int | None = None,
                  progress: Progress | None = None, interrupt: Interrupt | None = None) -> torch.Tensor:
    """Restore FFHQ-aligned face crops.

    Args:
        model: a loaded ``HonestFaceModel`` (any device / dtype).
        crops: ``(N, S, S, 3)`` float [0, 1] (resized to the model's 512 and back when S differs).
        refs: the person's :class:`ReferenceSet` (used for every face), one set or None per face (each face
            restored with its own references or blind, all in one UNet batch), or None for blind restoration.
        chunk_size: faces per UNet batch; None = all faces in one batch. On out-of-memory the chunk is halved
            and retried automatically.
        progress: ``progress(done_faces, total_faces)`` after each chunk.
        interrupt: called before each chunk; raise inside it to stop (e.g. ComfyUI's interrupt check).

    Returns:
        ``(N, S, S, 3)`` float32 [0, 1] on ``crops``' device.
    """
    crops = check_aligned_crops(crops, MIN_CROP_SIZE, CROP_SIZE_ADVICE).float()
    n = crops.shape[0]
    if n == 0:
        return crops.clone()
    if chunk_size is not None and int(chunk_size) < 1:
        raise HonestFaceError("chunk size", f"{chunk_size} is not a positive number", "Use 1 or more, or leave it empty")
    encoded = encode_face_references(model, refs, n)
    chunk = min(n, int(chunk_size or n))
    out = torch.empty_like(crops)
    done = 0
    while done < n:
        if interrupt is not None:
            interrupt()
        end = min(n, done + chunk)
        try:
            out[done:end] = _restore_chunk(model, crops[done:end], None if encoded is None else encoded[done:end])
        except torch.OutOfMemoryError as err:
            _free_memory(model.device)
            if chunk == 1:
                raise HonestFaceError("HonestFace restore", f"one face does not fit in {model.device} memory ({err})",
                                      "Free memory (close other models), use fp16/bf16, or run on a larger GPU") from err
            chunk = max(1, chunk // 2)
            logger.warning("out of memory: restoring %d faces per batch from now on", chunk)
            continue
        done = end
        if progress is not None:
            progress(done, n)
    return out


# ---------------------------------------------------------------------------------------------------------
# End to end


@dataclass
class RestoreResult:
    """Output of :func:`restore_images`.

    Attributes:
        images: ``(B, H, W, 3)`` restored images (input images without a face are returned unchanged).
        faces: the aligned faces (original crops, matrices, image index).
        restored: ``(N, S, S, 3)`` restored crops.
        mask: ``(B, H, W)`` how much of each pixel comes from the restored faces (0 = the input pixel unchanged).
        messages: what the user should know (e.g. images without a face).
        identities: with an identity library, who each detected face is (face numbers before ``unmatched="skip"``).
        face_references: the references each restored face got (None = blind), in the order of ``faces``.
    """

    images: torch.Tensor
    faces: AlignedFaces
    restored: torch.Tensor
    mask: torch.Tensor
    messages: list[str] = field(default_factory=list)
    identities: list[IdentityMatch] = field(default_factory=list)
    face_references: list[ReferenceSet | None] = field(default_factory=list)


def check_face_indices(faces: list[DetectedFace], selection: str, image_names: Sequence[str] | None = None) -> None:
    """Refuse an index selection (``"0,2"``) asking for a face that an image with faces does not have (an image
    without any face is passed through, as for every selection).

    Args:
        faces: every detected face of the batch (``image_index`` set).
        image_names: how to name each batch image in the message (default: ``image N of the batch``).
    """
    wanted = parse_selection(selection)
    if not isinstance(wanted, list):
        return
    counts = Counter(f.image_index for f in faces)
    for i, n in sorted(counts.items()):
        if max(wanted) >= n:
            name = image_names[i] if image_names is not None else f"image {i} of the batch"
            raise HonestFaceError(f"faces '{selection}'", f"face index {max(wanted)} requested but {name} has {n} "
                                  f"face{'s' if n > 1 else ''} (indices 0..{n - 1})",
                                  "Use indices that exist (0 = leftmost face), 'all' or 'largest'")


def restore_images(model, images: torch.Tensor, detector: FaceDetector, refs: ReferenceSet | IdentityLibrary | None = None,
                   selection: str = "all", crop_size: int = 512, parser=None, color_correction: str = "none",
                   chunk_size: int | None = None, progress: Progress | None = None,
                   interrupt: Interrupt | None = None, image_names: Sequence[str] | None = None,
                   strength: float = 1.0, min_face_size: int = 0, gender: str = "any", unmatched: str = "blind",
                   identity_encoder: IdentityEncoder | None = None,
                   identity_threshold: float = DEFAULT_THRESHOLD) -> RestoreResult:
    """Detect, align, restore and paste back every selected face of every image.

    Args:
        model: a loaded ``HonestFaceModel``.
        images: ``(B, H, W, 3)`` float [0, 1].
        detector: any :class:`~honestface_core.face.detection.FaceDetector`.
        refs: the person's references, an :class:`~honestface_core.face.identity_library.IdentityLibrary` (group
            photos: each face is matched to the closest person and restored with their references, all faces in
            one UNet batch), or None (blind).
        selection: ``"all"``, ``"largest"`` or indices such as ``"0,2"`` (per image, left to right); an index that
            an image with faces does not have is an error (:func:`check_face_indices`).
        crop_size: aligned crop side (512 = the model's native size).
        parser: optional :class:`~honestface_core.face.parsing.FaceParser` for the paste-back mask (else feathered).
        color_correction: ``"none"``, ``"adain"`` or ``"wavelet"`` toward the original crops.
        chunk_size, progress, interrupt: as in :func:`restore_crops` (progress counts restored faces).
        image_names: names of the batch images for messages (e.g. file names).
        strength: 0..1 blend of restored and original faces (:func:`~honestface_core.face.pasteback.paste_back`).
        min_face_size, gender: face filters (:func:`~honestface_core.face.detection.filter_faces`), applied before
            ``selection`` (indices count the faces that pass, left to right).
        unmatched: with a library, ``"blind"`` (restore faces that match nobody without references) or ``"skip"``
            (leave them untouched).
        identity_encoder, identity_threshold: with a library, the encoder that matches faces to people (default: the
            model's own ArcFace backbone) and the lowest cosine similarity that counts as a match.

    Returns:
        :class:`RestoreResult`; images are returned on the input's device.

    Whole images never travel to the model's device: faces are detected on the host copy (the input itself when it
    is on the CPU, as ComfyUI's IMAGE tensors are), aligned and pasted back where the images are, and only the
    aligned crops go to the model and back (our choice, docs/restore.md).
    """
    images = as_rgb_batch(images, "images")
    library = refs if isinstance(refs, IdentityLibrary) else None
    if library is not None and unmatched not in UNMATCHED:
        raise HonestFaceError("unmatched", f"'{unmatched}' is unknown", f"Use one of {', '.join(UNMATCHED)}")
    for person in library.sets if library is not None else [refs]:
        if person is not None and len(person) and model.config.variant != "osdface":
            model.check_references(person)  # fail before the slow steps
    parse_selection(selection)  # bad options fail before detection
    filter_faces([], min_face_size, gender)
    if not 0.0 <= float(strength) <= 1.0:
        raise HonestFaceError("strength", f"{strength} is outside 0..1", "Use 0 (input unchanged) to 1 (restored faces)")
    host = images if images.device.type == "cpu" else images.cpu()  # the only copy of whole images, if any
    found = filter_faces(detect_faces(detector, host, "all", interrupt=interrupt), min_face_size, gender)
    check_face_indices(found, selection, image_names)
    faces = select_faces(found, selection)
    aligned = align_faces(images, faces, crop_size)
    identities = []
    if library is not None and len(aligned):
        identities = library.match(aligned.crops, identity_encoder or BackboneIdentityEncoder(model), identity_threshold)
        refs = library.references_for(identities)
        if unmatched == "skip":
            keep = [i for i, r in enumerate(refs) if r is not None]
            aligned, refs = aligned.select(keep), [refs[i] for i in keep]
    messages = []
    missing = sorted(set(range(images.shape[0])) - {f.image_index for f in faces})
    if missing:
        which = "any image" if len(missing) == images.shape[0] else "image(s) " + ", ".join(map(str, missing))
        messages.append(f"no face found in {which}; passed through unchanged")
    for m in messages:
        logger.warning(m)
    if not len(aligned):
        return RestoreResult(images.clone(), aligned, aligned.crops, images.new_zeros(images.shape[:3]), messages,
                             identities, [])
    restored = restore_crops(model, aligned.crops, refs, chunk_size, progress, interrupt)
    masks = parser.face_mask(aligned.crops) if parser is not None else None
    pasted = paste_faces(images, restored, aligned.matrices, aligned.image_index, masks, color_correction, aligned.crops,
                         strength)
    per_face = list(refs) if isinstance(refs, list) else [refs] * len(aligned)
    return RestoreResult(pasted.images, aligned, restored, pasted.mask, messages, identities, per_face)
