"""Training data: identity folders (target + K references of the same person) and single-image folders.

Layouts::

    identity dataset:  root/<identity>/<image>.{jpg,png,...}   (CelebRef-HQ, Reface-HQ, FFHQ-Ref after prep)
    single dataset:    root/<image>.{jpg,png,...}              (FFHQ: references always dropped)

Faces are detected and FFHQ-aligned with the core pipeline once, then cached on disk as PNG files next to an
index JSON per source folder; an entry is recomputed when its source file's size or mtime changes (and the
crop is reused when the content hash did not change). Bad data is skipped and counted; a dataset with nothing
usable raises :class:`HonestFaceError` before training starts.

Every sample is a pure function of ``(seed, position)`` (position = global sample counter): the epoch
permutation, the references, the reference dropout and the degradation all come from per-sample generators,
so a resumed run sees exactly the data an uninterrupted one would (our choice; no sampler state to save).
With ``data.fixed_pairs`` the references and degradation come from ``(seed, dataset index)`` instead: every
epoch sees the same pairs (overfit checks).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from honestface_core.errors import HonestFaceError
from honestface_core.files.images import IMAGE_EXTENSIONS, load_image
from training.config import DataConfig, DatasetSpec
from training.degradation import DegradationConfig, degrade, sample_rng

CACHE_VERSION = 1
Aligner = Callable[[np.ndarray], "np.ndarray | None"]  # uint8 RGB image -> aligned uint8 RGB crop or None


@dataclass
class FaceRecord:
    """One usable aligned face: its cached crop file, source content hash and a 16x16 grey thumbnail."""

    source: str
    sha1: str
    crop: Path
    thumb: np.ndarray


def thumbnail(crop: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail (float32, 0..255) used for near-duplicate detection."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)


def resize_aligner(resolution: int) -> Aligner:
    """For already-aligned datasets (FFHQ): centre-square and resize to ``resolution``."""
    def align(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        interp = cv2.INTER_AREA if s > resolution else cv2.INTER_CUBIC
        return cv2.resize(img, (resolution, resolution), interpolation=interp)
    return align


def build_detector(cfg: DataConfig):
    """The detector named by ``data.detector`` (any kind of :func:`honestface_core.face.detection.build_detector`;
    ``yunet`` reads ``data.detector_path`` when set)."""
    from honestface_core.face.detection import YuNetDetector, build_detector as core_detector
    from honestface_core.files.model_paths import default_models_dir

    if cfg.detector == "yunet" and cfg.detector_path:
        return YuNetDetector(cfg.detector_path)
    return core_detector(cfg.models_dir or default_models_dir(), cfg.detector, what="config 'data.detector'")


def core_aligner(cfg: DataConfig) -> Aligner:
    """Detect with the core detector (largest face, our choice) and FFHQ-align with ``align_faces``."""
    from honestface_core.face.alignment import align_faces
    from honestface_core.face.detection import select_faces

    detector = build_detector(cfg)

    def align(img: np.ndarray) -> np.ndarray | None:
        faces = select_faces(detector.detect(img), "largest")
        if not faces:
            return None
        image = torch.from_numpy(np.array(img)).float().div(255).unsqueeze(0)
        crops = align_faces(image, faces[:1], size=cfg.resolution).crops
        return crops[0].mul(255).round().clamp(0, 255).byte().numpy()
    return align


class FaceCache:
    """Aligned-crop cache of one source folder under ``cache_dir/<aligner_key>/``."""

    def __init__(self, cache_dir: str | Path, aligner_key: str):
        self.dir = Path(cache_dir) / aligner_key
        self.dir.mkdir(parents=True, exist_ok=True)

    def scan(self, root: Path, files: list[Path], aligner: Aligner, stats: Counter) -> dict[str, FaceRecord]:
        """Align (or reuse) every file; return usable records by relative path, counting skips in ``stats``."""
        index_path = self.dir / f"index_{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]}.json"
        old = json.loads(index_path.read_text()) if index_path.is_file() else {}
        if old.get("version") != CACHE_VERSION:
            old = {}
        entries, records = {}, {}
        for path in files:
            rel = path.relative_to(root).as_posix()
            st = path.stat()
            entry = old.get("files", {}).get(rel)
            if not (entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns
                    and (entry["status"] != "ok" or (self.dir / f"{entry['sha1']}.png").is_file())):
                entry = self._process(path, st, aligner)
            entries[rel] = entry
            if entry["status"] != "ok":
                stats[entry["status"]] += 1
                continue
            records[rel] = FaceRecord(rel, entry["sha1"], self.dir / f"{entry['sha1']}.png",
                                      np.asarray(entry["thumb"], np.float32).reshape(16, 16))
        tmp = index_path.with_suffix(f".{os.getpid()}.tmp")  # several processes may build the cache at once
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": entries}))
        os.replace(tmp, index_path)
        return records

    def _process(self, path: Path, st: os.stat_result, aligner: Aligner) -> dict:
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        try:
            data = path.read_bytes()
        except OSError:
            return {**entry, "sha1": "", "status": "unreadable"}
        sha1 = hashlib.sha1(data).hexdigest()
        crop_path = self.dir / f"{sha1}.png"
        if crop_path.is_file():
            crop = _read_crop(crop_path)
        else:
            try:
                img = load_image(path)
            except HonestFaceError:
                return {**entry, "sha1": sha1, "status": "unreadable"}
            crop = aligner(img)
            if crop is None:
                return {**entry, "sha1": sha1, "status": "no_face"}
            tmp = crop_path.with_name(f"{crop_path.stem}.{os.getpid()}.tmp.png")
            cv2.imwrite(str(tmp), np.ascontiguousarray(crop[..., ::-1]))
            os.replace(tmp, crop_path)
        return {**entry, "sha1": sha1, "status": "ok", "thumb": thumbnail(crop).round(2).ravel().tolist()}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def is_near_duplicate(a: FaceRecord, b: FaceRecord, threshold: float) -> bool:
    """Same file content, or thumbnails closer than ``threshold`` (mean abs difference on 0..255)."""
    return a.sha1 == b.sha1 or float(np.abs(a.thumb - b.thumb).mean()) < threshold


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(127.5).sub(1)


class FaceRestorationDataset(Dataset):
    """Samples ``{"hq", "lq", "refs", "ref_mask", "position"}`` addressed by global sample position.

    ``hq``/``lq``: (3, S, S) in [-1, 1]; ``refs``: (refs_max, 3, S, S) zero-padded; ``ref_mask``: (refs_max,) bool.
    """

    def __init__(self, data: DataConfig, degradation: DegradationConfig, seed: int, cache_dir: str | Path,
                 aligner_factory: Callable[[DataConfig], Aligner] = core_aligner, log: Callable[[str], None] = print):
        if not data.datasets:
            raise HonestFaceError("config 'data.datasets'", "no dataset configured", "Add at least one {root, kind} entry")
        self.data, self.degradation, self.seed = data, degradation, int(seed)
        self.samples: list[tuple[FaceRecord, list[FaceRecord]]] = []
        self._aligner: Aligner | None = None
        self._aligner_factory = aligner_factory
        for spec in data.datasets:
            stats = Counter()
            n_before = len(self.samples)
            self._add(spec, cache_dir, stats)
            skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(stats.items())) or "nothing"
            log(f"dataset {spec.root} ({spec.kind}): {len(self.samples) - n_before} samples; skipped: {skipped}")
        if not self.samples:
            raise HonestFaceError("config 'data.datasets'", "no usable training sample in "
                                  + ", ".join(repr(s.root) for s in data.datasets),
                                  "Check the folder layout (identity: root/<person>/<images>, at least 2 images with "
                                  "a detectable face per person; single: root/<images>) and the log's skip counts")
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)

    def _aligner_for(self, spec: DatasetSpec) -> tuple[str, Aligner]:
        if spec.aligned:
            return f"aligned-{self.data.resolution}", resize_aligner(self.data.resolution)
        if self._aligner is None:
            self._aligner = self._aligner_factory(self.data)
        return f"{self.data.detector}-{self.data.resolution}", self._aligner

    def _add(self, spec: DatasetSpec, cache_dir: str | Path, stats: Counter) -> None:
        root = Path(spec.root)
        if not root.is_dir():
            raise HonestFaceError(f"dataset root '{root}'", "is not a folder", "Fix data.datasets[].root in the config")
        key, aligner = self._aligner_for(spec)
        cache = FaceCache(cache_dir, key)
        if spec.kind == "single":
            records = cache.scan(root, _image_files(root), aligner, stats)
            self.samples += [(r, []) for r in records.values()]
            return
        if spec.kind != "identity":
            raise HonestFaceError(f"dataset '{root}'", f"unknown kind '{spec.kind}'", "Use 'identity' or 'single'")
        for person in sorted(p for p in root.iterdir() if p.is_dir()):
            files = _image_files(person)
            if not files:
                stats["empty_identity_folders"] += 1
                continue
            faces = list(cache.scan(root, files, aligner, stats).values())
            if len(faces) < 2:
                stats["identities_with_fewer_than_2_usable_images"] += 1
                continue
            for target in faces:
                refs = [r for r in faces if not is_near_duplicate(r, target, self.data.near_duplicate_threshold)]
                if refs:
                    self.samples.append((target, refs))
                else:
                    stats["targets_without_a_non_duplicate_reference"] += 1

    def __len__(self) -> int:
        return len(self.samples)

    def index_at(self, position: int) -> int:
        """Dataset index of a global sample position (a fresh permutation per epoch)."""
        n = len(self.samples)
        epoch = position // n
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(n)
        return int(self._perm[position % n])

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        index = self.index_at(position)
        target, candidates = self.samples[index]
        rng = sample_rng(self.seed, index, stream=2) if self.data.fixed_pairs else sample_rng(self.seed, position)
        hq = _read_crop(target.crop)
        lq = degrade(hq, self.degradation, rng)
        s, kmax = hq.shape[0], self.data.refs_max
        refs = torch.zeros(kmax, 3, s, s)
        mask = torch.zeros(kmax, dtype=torch.bool)
        if candidates and kmax > 0 and rng.random() >= self.data.ref_dropout:
            k = int(rng.integers(min(self.data.refs_min, len(candidates)), min(kmax, len(candidates)) + 1))
            for j, i in enumerate(rng.choice(len(candidates), size=k, replace=False)):
                refs[j] = to_tensor(_read_crop(candidates[i].crop))
                mask[j] = True
        return {"hq": to_tensor(hq), "lq": to_tensor(lq), "refs": refs, "ref_mask": mask,
                "position": torch.tensor(position)}


def _read_crop(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise HonestFaceError(f"cached crop '{path}'", "could not be read", "Delete the cache folder and restart")
    return np.ascontiguousarray(img[..., ::-1])


class PositionSampler(Sampler[int]):
    """Infinite sampler of global sample positions for one process, starting at micro-batch ``start``.

    Micro-batch m of process r holds positions ``(m * world + r) * batch + i``: every process sees distinct
    samples and a resume at micro-batch m continues the exact same sequence.
    """

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1):
        self.batch_size, self.start, self.rank, self.world = batch_size, start, rank, world

    def __iter__(self) -> Iterator[int]:
        m = self.start
        while True:
            base = (m * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            m += 1
