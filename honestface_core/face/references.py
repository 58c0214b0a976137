"""Reference photos of the person: read them (IMAGE batch or a folder), align the largest face of each, embed,
optionally keep the top-K most similar to the target, and save / load the result as an identity set.

An identity set is a ``.safetensors`` file with the aligned crops and embeddings as tensors and the names,
per-reference status lines, encoder name and format version as JSON metadata (our format).
"""

from __future__ import annotations

import json
import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import FaceDetector, select_faces
from honestface_core.errors import HonestFaceError
from honestface_core.face.identity import IdentityEncoder, cosine_similarity
from honestface_core.files.images import IMAGE_EXTENSIONS, load_image, uint8_to_tensor
from honestface_core.tensor_checks import check_finite

IDENTITY_SET_FORMAT = "honestface.identity_set"
IDENTITY_SET_VERSION = 1
MIN_CROP_SIZE = 64  # smallest aligned reference crop (Load References' crop_size minimum; our choice)
REBUILD = "Rebuild the identity set from the photos (HonestFace Load References + Save Identity Set)"

T = TypeVar("T")


@dataclass
class ReferenceSet:
    """Aligned references of one person.

    Attributes:
        crops: ``(K, S, S, 3)`` float [0, 1], FFHQ-aligned largest face of each kept reference.
        embeddings: ``(K, D)`` float32 L2-normalised, made by ``encoder_name``.
        names: ``K`` names of the kept references (file names, or ``"image i"`` for a batch).
        status: one line per *input* reference, kept or skipped, e.g. ``"obama.jpg: ok"``,
            ``"gradient.png: skipped: no face found"``, ``"biden.jpg: skipped: not in top 2 (similarity 0.05)"``.
        encoder_name: the identity encoder that made ``embeddings`` (e.g. ``"arcface:glintr100"``, ``"sface"``).

    A set is not edited in place by this pack; what a model computes from it is cached on the set (:meth:`cached`).
    """

    crops: torch.Tensor
    embeddings: torch.Tensor
    names: list[str]
    status: list[str]
    encoder_name: str
    _cache: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False, repr=False,
                                              compare=False)

    def __post_init__(self):
        k = len(self.names)
        if self.crops.dim() != 4 or self.crops.shape[-1] != 3 or self.crops.shape[0] != k or self.embeddings.dim() != 2 \
                or self.embeddings.shape[0] != k:
            raise HonestFaceError("reference set", f"inconsistent shapes: crops {tuple(self.crops.shape)}, embeddings "
                                  f"{tuple(self.embeddings.shape)}, {k} names", "Rebuild the reference set from the photos")

    def __len__(self) -> int:
        return len(self.names)

    def cached(self, owner: object, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, computed once per ``owner`` and ``key`` and kept on this set (e.g. a model's encoded
        references: owner = its backbone, key = device and dtype; ``HonestFaceModel.encode_references``).

        ``owner`` is held weakly: its entries go when it is freed. An entry is built again when ``crops`` or
        ``embeddings`` were replaced or edited in place (tensor identity and version counter: metadata only, nothing
        is read back from the device; inference-mode tensors have no version counter).
        """
        state = tuple((t, None if t.is_inference() else t._version) for t in (self.crops, self.embeddings))
        entries = self._cache.setdefault(owner, {})
        hit = entries.get(key)
        if hit is not None and all(t is u and v == w for (t, v), (u, w) in zip(hit[0], state)):
            return hit[1]
        value = build()
        entries[key] = (state, value)
        return value

    def embeddings_by(self, encoder: IdentityEncoder) -> torch.Tensor:
        """``(K, D)`` the references in ``encoder``'s space: the stored embeddings when ``encoder`` made them, else
        the crops embedded by ``encoder`` (two encoders' spaces never mix)."""
        return self.embeddings if self.encoder_name == encoder.name else encoder.embed(self.crops)

    def mean_embedding(self, encoder: IdentityEncoder | None = None) -> torch.Tensor:
        """``(1, D)`` L2-normalised mean of the reference embeddings (the Ref-Deg target), in ``encoder``'s space
        when one is given (:meth:`embeddings_by`)."""
        emb = self.embeddings if encoder is None else self.embeddings_by(encoder)
        return F.normalize(emb.float().mean(0, keepdim=True), dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Reading references


MAX_NAME_CHARS = 1024  # longest folder / file name a node accepts (our choice; Linux allows 4096 and 255 per part)


def check_relative_name(name: object, what: str, inside: str) -> str:
    """Check a path typed into a node (a folder, a file name prefix): text without control characters, at most
    :data:`MAX_NAME_CHARS` characters (255 bytes per part), relative, and without ``..`` parts, so that it can only
    name something inside ``inside`` (e.g. "the input directory '/ComfyUI/input'"). Returns ``name``.

    Raises:
        HonestFaceError: naming ``what`` and the rule the name breaks.
    """
    fix = f"Type a name relative to {inside}, e.g. 'refs/alice'"
    if not isinstance(name, str):
        raise HonestFaceError(what, f"is a {type(name).__name__}, not text", fix)
    shown = repr(name) if len(name) <= 60 else repr(name[:57]) + "..."
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise HonestFaceError(f"{what} {shown}", "contains a control character (e.g. a null byte or a line break)", fix)
    parts = re.split(r"[/\\]", name)
    if len(name) > MAX_NAME_CHARS or any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts):
        raise HonestFaceError(f"{what} {shown}", f"is {len(name)} characters long; names are limited to "
                              f"{MAX_NAME_CHARS} characters and 255 bytes per folder or file name", fix)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:([/\\]|$)", name):
        raise HonestFaceError(f"{what} {shown}", f"is an absolute path; only names inside {inside} are read or written", fix)
    if ".." in parts:
        raise HonestFaceError(f"{what} {shown}", f"contains '..', which could lead outside {inside}", fix)
    return name


def resolve_reference_folder(input_dir: str | os.PathLike, folder: str) -> Path:
    """Resolve ``folder`` (relative to ``input_dir``) and make sure it stays inside ``input_dir``.

    The name is checked with :func:`check_relative_name` (no absolute paths, no ``..``); symbolic links are
    resolved before the final check, so they cannot lead outside either.

    Raises:
        HonestFaceError: empty or malformed name, outside ``input_dir``, or not an existing folder.
    """
    base = Path(input_dir).resolve()
    inside = f"the input directory '{base}'"
    if isinstance(folder, str) and not folder.strip():
        raise HonestFaceError("reference folder", "no folder name was given",
                              f"Type the name of a folder inside the input directory '{base}', e.g. 'refs/alice'")
    folder = check_relative_name(folder, "reference folder", inside).strip()
    target = (base / folder).resolve()
    if not target.is_relative_to(base):
        raise HonestFaceError(f"reference folder '{folder}'", f"resolves to '{target}', which is outside {inside}",
                              "Put the reference photos in a folder inside the input directory and give its name relative "
                              "to it (no links that lead outside)")
    if not target.is_dir():
        raise HonestFaceError(f"reference folder '{folder}'", f"'{target}' does not exist or is not a folder",
                              f"Create it inside '{base}' and put photos of the person in it")
    return target


def read_reference_folder(folder: str | os.PathLike, within: str | os.PathLike | None = None) -> list[tuple[str, np.ndarray]]:
    """Read every image file of ``folder`` (sorted by name; other files and hidden files are ignored).

    Args:
        folder: the folder.
        within: if given, files (e.g. symbolic links) that resolve outside this folder are refused.

    Returns:
        ``(file name, uint8 RGB (H, W, 3))`` pairs; sizes may differ (each reference is aligned on its own).

    Raises:
        HonestFaceError: no image files, or a file that cannot be read (naming it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HonestFaceError(f"reference folder '{folder}'", "does not exist or is not a folder", "Check the path")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                    and p.is_file()), key=lambda p: p.name)
    if not files:
        raise HonestFaceError(f"reference folder '{folder}'", f"contains no image files ({', '.join(IMAGE_EXTENSIONS)})",
                              "Put one or more photos of the person in it")
    root = Path(within).resolve() if within is not None else None
    out = []
    for path in files:
        if root is not None and not path.resolve().is_relative_to(root):
            raise HonestFaceError(f"reference image '{path}'", f"links to '{path.resolve()}', outside '{root}'",
                                  "Copy the photo into the folder instead of linking to it")
        try:
            out.append((path.name, load_image(path)))
        except HonestFaceError as err:
            raise HonestFaceError(f"reference image '{path}'", err.problem, "Remove or replace this file") from err
    return out


# ---------------------------------------------------------------------------------------------------------
# Preparing a reference set


def prepare_references(images: list[tuple[str, np.ndarray]], detector: FaceDetector, encoder: IdentityEncoder,
                       target_embedding: torch.Tensor | None = None, top_k: int = 0, size: int = 512) -> ReferenceSet:
    """Align and embed the largest face of each reference.

    Args:
        images: ``(name, uint8 RGB (H, W, 3))`` pairs, any sizes (e.g. from :func:`read_reference_folder`).
        detector: face detector (see :mod:`honestface_core.face.detection`).
        encoder: identity encoder (see :mod:`honestface_core.face.identity`).
        target_embedding: ``(D,)`` or ``(N, D)`` embedding(s) of the face to restore (several rows are averaged),
            made by the same encoder; needed when ``top_k > 0``.
        top_k: keep only the K references most similar to the target (0 = keep all).
        size: aligned crop size.

    Returns:
        a :class:`ReferenceSet`; references without a face are skipped and reported in ``status``.

    Raises:
        HonestFaceError: no images, no face in any of them, or ``top_k`` without a target.
    """
    if not images:
        raise HonestFaceError("references", "no reference images were given", "Give one or more photos of the person")
    if top_k < 0:
        raise HonestFaceError("top_k", f"{top_k} is negative", "Use 0 to keep every reference, or a positive count")
    if top_k > 0 and target_embedding is None:
        raise HonestFaceError("top_k", "selecting the most similar references needs the target face's embedding",
                              "Connect the target image, or set top_k to 0")
    status: list[str] = []
    kept: list[int] = []  # index into status of each kept reference
    names: list[str] = []
    crops = []
    for name, img in images:
        faces = detector.detect(img)
        if not faces:
            status.append(f"{name}: skipped: no face found")
            continue
        face = select_faces(faces, "largest")[0]
        face.image_index = 0
        crops.append(align_faces(uint8_to_tensor(img), [face], size).crops)
        kept.append(len(status))
        names.append(name)
        status.append(f"{name}: ok" + (f" (largest of {len(faces)} faces)" if len(faces) > 1 else ""))
    if not crops:
        raise HonestFaceError("references", f"no face was found in any of the {len(images)} reference images",
                              "Use clear photos where the person's face is visible and at least ~64 pixels wide")
    crop_t = torch.cat(crops)
    emb = encoder.embed(crop_t)
    if 0 < top_k < len(names):
        target = torch.as_tensor(target_embedding).float()
        target = F.normalize(target.reshape(-1, target.shape[-1]), dim=-1).mean(0)  # several target faces: average
        sim = cosine_similarity(emb, target)[:, 0].cpu()
        order = torch.argsort(sim, descending=True).tolist()
        keep = sorted(order[:top_k])  # our choice: kept references stay in input order
        for rank, i in enumerate(order):
            line = status[kept[i]]
            status[kept[i]] = (f"{line} (similarity {sim[i]:.3f}, rank {rank + 1})" if rank < top_k else
                               f"{names[i]}: skipped: not in top {top_k} (similarity {sim[i]:.3f})")
        idx = torch.tensor(keep)
        crop_t, emb, names = crop_t[idx], emb[idx.to(emb.device)], [names[i] for i in keep]
    return ReferenceSet(crop_t, emb, names, status, encoder.name)


# ---------------------------------------------------------------------------------------------------------
# Identity set files


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() != ".safetensors":
        raise HonestFaceError(f"identity set file '{path}'", "does not end in .safetensors",
                              "Use a file name ending in .safetensors")


def save_identity_set(refset: ReferenceSet, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``refset`` to a ``.safetensors`` file (:func:`~honestface_core.files.outputs.write_file`: an existing
    file is kept unless ``overwrite`` is True, a symbolic link is never written through)."""
    from safetensors.torch import save

    from honestface_core.files.outputs import write_file

    path = Path(path)
    _check_suffix(path)
    metadata = {
        "format": IDENTITY_SET_FORMAT,
        "format_version": str(IDENTITY_SET_VERSION),
        "names": json.dumps(list(refset.names)),
        "status": json.dumps(list(refset.status)),
        "encoder_name": refset.encoder_name,
    }
    tensors = {"crops": refset.crops.detach().float().cpu().contiguous(),
               "embeddings": refset.embeddings.detach().float().cpu().contiguous()}
    return write_file(path, save(tensors, metadata=metadata), "identity set file", overwrite)


def load_identity_set(path: str | os.PathLike) -> ReferenceSet:
    """Read an identity set written by :func:`save_identity_set`.

    Raises:
        HonestFaceError: missing file, not a readable .safetensors file, not an identity set, or contents that
            would fail later: crops that are not square RGB of at least :data:`MIN_CROP_SIZE` pixels in [0, 1],
            embeddings that are not one L2-normalised row per crop, NaN / infinite values, non-float tensors,
            names or status lines that do not match the crops.
    """
    from safetensors import safe_open

    path = Path(path)
    what = f"identity set file '{path}'"
    if not path.is_file():
        raise HonestFaceError(what, "does not exist", "Check the path, or save an identity set first")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type, OSError or ValueError for damaged files
        raise HonestFaceError(what, f"is not a readable .safetensors file ({err})",
                              "Replace it with an intact identity set, or rebuild it from the photos") from err
    if meta.get("format") != IDENTITY_SET_FORMAT or not {"crops", "embeddings"} <= tensors.keys():
        raise HonestFaceError(what, "is a .safetensors file but not a HonestFace identity set",
                              "Pick a file saved by the HonestFace 'Save Identity Set' node or save_identity_set()")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if not 1 <= version <= IDENTITY_SET_VERSION:
        raise HonestFaceError(what, f"has identity-set format version {meta.get('format_version')!r}, this HonestFace reads "
                              f"up to {IDENTITY_SET_VERSION}", "Update HonestFace, or rebuild the set from the photos")
    crops, embeddings = _checked_identity_tensors(tensors["crops"], tensors["embeddings"], what)
    try:
        names, status = json.loads(meta["names"]), json.loads(meta["status"])
        if not isinstance(names, list) or not isinstance(status, list) or len(status) < len(names):
            raise ValueError("'names' and 'status' must be lists, with a status line for every kept reference")
        return ReferenceSet(crops, embeddings, [str(n) for n in names], [str(s) for s in status],
                            str(meta.get("encoder_name", "")))
    except (KeyError, TypeError, ValueError) as err:
        raise HonestFaceError(what, f"has damaged metadata ({str(err)[:200]})", REBUILD) from err


def _checked_identity_tensors(crops: torch.Tensor, embeddings: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored crops and embeddings as float32, after checking everything restoring with them relies on."""
    for name, tensor in (("crops", crops), ("embeddings", embeddings)):
        if not tensor.is_floating_point():
            raise HonestFaceError(what, f"tensor '{name}' has dtype {tensor.dtype}, not a float type", REBUILD)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2] or crops.shape[0] == 0:
        raise HonestFaceError(what, f"tensor 'crops' has shape {tuple(crops.shape)}, not (K, S, S, 3): K >= 1 square "
                              "RGB crops", REBUILD)
    if crops.shape[1] < MIN_CROP_SIZE:
        raise HonestFaceError(what, f"holds {crops.shape[1]}x{crops.shape[2]} crops, smaller than the "
                              f"{MIN_CROP_SIZE}x{MIN_CROP_SIZE} minimum", REBUILD + " (crop size 512)")
    if embeddings.ndim != 2 or embeddings.shape[0] != crops.shape[0] or embeddings.shape[1] == 0:
        raise HonestFaceError(what, f"tensor 'embeddings' has shape {tuple(embeddings.shape)}, not one row per crop "
                              f"({crops.shape[0]}, D)", REBUILD)
    check_finite({"crops": crops, "embeddings": embeddings}, what, REBUILD)
    crops, embeddings = crops.float(), embeddings.float()
    if crops.min() < 0 or crops.max() > 1:
        raise HonestFaceError(what, f"tensor 'crops' has values from {float(crops.min()):.3g} to {float(crops.max()):.3g}, "
                              "outside [0, 1]", REBUILD)
    norms = embeddings.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-2):  # bf16 encoders stay well within 1e-2
        raise HonestFaceError(what, f"tensor 'embeddings' is not L2-normalised (row norms {float(norms.min()):.3g} to "
                              f"{float(norms.max()):.3g})", REBUILD)
    return crops, embeddings
