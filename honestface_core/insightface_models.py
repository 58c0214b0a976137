"""insightface model packs: load ``FaceAnalysis`` from local files only, and write random-weight test packs.

A pack lives in ``models/insightface/models/<name>/`` (ComfyUI's usual place, as used by InstantID / PuLID /
ReActor). :func:`load_face_analysis` checks the folder and its detector + recognizer files before insightface
sees them, so insightface never gets the chance to download anything, and returns insightface's own
``FaceAnalysis`` object (the ecosystem's ``FACEANALYSIS``). A pack unzipped one level too deep is found (with a
warning), and the onnxruntime providers each model really runs on are logged once per file.

:func:`write_insightface_test_models` writes small random-weight ONNX files with the exact input/output
signatures insightface's model router recognises, under the real file names, so the real loading code can be
exercised where the real (non-commercial, hub-hosted) weights cannot be present.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import HonestFaceError, MissingModelError
from .model_paths import INSIGHTFACE_URL, MODEL_FILES
from .onnx_sessions import log_session_providers, usable_providers

logger = logging.getLogger(__name__)

PACKS_FOLDER = "insightface/models"

#: pack name -> file names, derived from :data:`model_paths.MODEL_FILES` (detector first, recognizer second).
INSIGHTFACE_PACKS: dict[str, tuple[str, ...]] = {}
for _m in MODEL_FILES:
    if _m.folder.startswith(PACKS_FOLDER + "/"):
        _name = _m.folder[len(PACKS_FOLDER) + 1:]
        INSIGHTFACE_PACKS[_name] = INSIGHTFACE_PACKS.get(_name, ()) + (_m.filename,)
del _m, _name


def pack_folder(models_dir: str | os.PathLike, name: str) -> Path:
    """``models_dir/insightface/models/<name>``."""
    return Path(models_dir) / PACKS_FOLDER / name


def _required_files(name: str) -> tuple[str, ...]:
    """Detector and recognizer file names of a known pack (empty for packs we do not know)."""
    files = INSIGHTFACE_PACKS.get(name, ())
    return files[:2]


def _has_pack_files(folder: Path, required: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() for f in required) if required else any(folder.glob("*.onnx"))


_nested_reported: set[Path] = set()


def _check_pack(models_dir: str | os.PathLike, name: str) -> Path:
    """The folder with pack ``name``'s files: ``pack_folder(models_dir, name)``, or a subfolder of it when the
    pack's zip was unpacked one level too deep (``antelopev2/antelopev2/*.onnx``, a common mistake; our choice:
    use it and warn once, since other node packs will not find it there)."""
    folder = pack_folder(models_dir, name)
    required = _required_files(name)
    if not folder.is_dir():
        raise MissingModelError(", ".join(required) or "<the pack's .onnx files>", folder, INSIGHTFACE_URL)
    candidates = [folder] + sorted(sub for sub in folder.iterdir() if sub.is_dir() and any(sub.glob("*.onnx")))
    complete = [c for c in candidates if _has_pack_files(c, required)]
    if complete and complete[0] != folder:
        if complete[0] not in _nested_reported:
            _nested_reported.add(complete[0])
            logger.warning("insightface pack '%s' was unpacked one level too deep: using the files in '%s'. Other "
                           "node packs (InstantID, PuLID, ReActor) look in '%s': move the .onnx files up there.",
                           name, complete[0], folder)
        return complete[0]
    if complete:
        return folder
    # name the missing file in the folder that holds part of the pack (the nested one if only it has .onnx files)
    where = next((c for c in candidates if any(c.glob("*.onnx"))), folder)
    for filename in required:
        if not (where / filename).is_file():
            raise MissingModelError(filename, where, INSIGHTFACE_URL)
    raise MissingModelError("<the pack's .onnx files>", folder, INSIGHTFACE_URL)


def load_face_analysis(
    models_dir: str | os.PathLike,
    name: str = "antelopev2",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    det_size: int = 640,
    allowed_modules: Sequence[str] | None = None,
):
    """Load insightface's ``FaceAnalysis`` from ``models_dir/insightface/models/<name>`` only (or from its
    subfolder when the pack was unpacked one level too deep, with a warning).

    Logs once per model file which onnxruntime providers each model really runs on.

    Args:
        models_dir: a ComfyUI-style ``models/`` folder.
        name: pack folder name (``antelopev2``, ``buffalo_l`` or any other pack folder).
        providers: onnxruntime execution providers, in order of preference.
        det_size: square detector input size in pixels.
        allowed_modules: insightface task names to load (e.g. ``("detection", "recognition")``); all if None.

    Returns:
        a prepared ``insightface.app.FaceAnalysis``.

    Raises:
        MissingModelError: the folder, its detector or its recognizer file is missing (checked before
            insightface runs, so nothing is downloaded and no ``~/.insightface`` folder is created).
        HonestFaceError: the files exist but insightface cannot load them.
    """
    folder = _check_pack(models_dir, name).resolve()
    if int(det_size) < 32 or int(det_size) % 32:
        raise HonestFaceError("det_size", f"{det_size} is not a positive multiple of 32", "Use e.g. 640")
    usable = usable_providers(providers)  # also: a clear error when no onnxruntime build is installed
    try:
        from insightface.app import FaceAnalysis
    except ImportError as err:
        raise HonestFaceError("insightface", f"cannot be imported ({err})",
                              "Install it into the Python that runs ComfyUI: `pip install insightface`") from err
    # insightface 2.x loads `name` directly when it is a folder; 0.7.3 joins root/models/name, which for an
    # absolute `name` is that same folder (os.path.join drops everything before an absolute component).
    try:
        app = FaceAnalysis(name=str(folder), root=str(Path(models_dir).resolve() / "insightface"),
                           allowed_modules=list(allowed_modules) if allowed_modules is not None else None,
                           providers=usable)
    except AssertionError as err:
        raise HonestFaceError(f"insightface pack '{folder}'", "contains no face detector model that insightface recognises",
                              f"Put the pack's detector .onnx file (e.g. {INSIGHTFACE_PACKS['antelopev2'][0]}) in it") from err
    except Exception as err:  # onnx/onnxruntime raise many types for unreadable files
        raise HonestFaceError(f"insightface pack '{folder}'", f"insightface could not load it ({err})",
                              "Replace the damaged .onnx file(s) with a fresh copy of the pack") from err
    if allowed_modules is None or "recognition" in allowed_modules:
        if "recognition" not in app.models:
            raise HonestFaceError(f"insightface pack '{folder}'", "contains no recognition (ArcFace) model",
                                  "Use a complete pack such as antelopev2 or buffalo_l")
    ctx_id = 0 if usable[0] != "CPUExecutionProvider" else -1
    app.prepare(ctx_id=ctx_id, det_size=(int(det_size), int(det_size)))
    for model in app.models.values():  # after prepare(), which may move a model's session to CPU
        if getattr(model, "session", None) is not None:
            log_session_providers(model.model_file, model.session, usable)
    return app


# ---------------------------------------------------------------------------------------------------------
# Random-weight test packs
# ---------------------------------------------------------------------------------------------------------

_OPSET = 17
_IR_VERSION = 8  # readable by older onnxruntime builds too


def _conv(graph: list, inits: list, rng: np.random.Generator, x: str, out: str, cin: int, cout: int, k: int,
          bias: float = 0.0, scale: float = 1.0) -> str:
    """Append a k x k / stride k convolution with random weights."""
    from onnx import helper, numpy_helper

    w = (rng.standard_normal((cout, cin, k, k)) * scale / np.sqrt(cin * k * k)).astype(np.float32)
    b = np.full((cout,), bias, np.float32)
    inits += [numpy_helper.from_array(w, out + "_w"), numpy_helper.from_array(b, out + "_b")]
    graph.append(helper.make_node("Conv", [x, out + "_w", out + "_b"], [out], kernel_shape=[k, k], strides=[k, k], name=out))
    return out


def _save(path: Path, nodes: list, inits: list, inputs: list, outputs: list) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="honestface-random-weights")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _write_head_model(path: Path, size: int, out_dim: int, input_name: str, patch: int, seed: int) -> Path:
    """(N,3,size,size) -> (N,out_dim): patchify conv + linear, random weights (landmark and gender/age
    signatures)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    c = 4
    feat = _conv(nodes, inits, rng, input_name, "patch", 3, c, patch)
    nodes.append(helper.make_node("Relu", [feat], ["act"]))
    nodes.append(helper.make_node("Flatten", ["act"], ["flat"], axis=1))
    n_in = c * (size // patch) ** 2
    inits += [numpy_helper.from_array((rng.standard_normal((n_in, out_dim)) / np.sqrt(n_in)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(out_dim, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"]))
    return _save(path, nodes, inits,
                 [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
                 [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", out_dim])])


def _write_scrfd(path: Path, seed: int) -> Path:
    """SCRFD signature: input (1,3,H,W) dynamic; 9 outputs = scores, boxes, 5-point keypoints for strides
    8/16/32 with 2 anchors per position, flattened as (H/s*W/s*2, 1|4|10) like scrfd_10g_bnkps / det_10g."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    outs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        feat = _conv(nodes, inits, rng, "input.1", f"feat{stride}", 3, 8, stride)
        nodes.append(helper.make_node("Relu", [feat], [f"relu{stride}"]))
        # Random weights still make "faces": only the coarsest level fires, on a minority of positions,
        # so downstream wiring sees a few boxes without thousands of candidates (our choice).
        for kind, ch, bias in (("score", 2, -1.3 if stride == 32 else -12.0), ("bbox", 8, 1.0), ("kps", 20, 0.0)):
            y = _conv(nodes, inits, rng, f"relu{stride}", f"{kind}{stride}_conv", 8, ch, 1, bias=bias, scale=2.0)
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [y], [f"{y}_sig"]))
                y = f"{y}_sig"
            elif kind == "bbox":
                nodes.append(helper.make_node("Softplus", [y], [f"{y}_pos"]))  # positive distances
                y = f"{y}_pos"
            nodes.append(helper.make_node("Transpose", [y], [f"{y}_t"], perm=[0, 2, 3, 1]))
            shape_name = f"{kind}{stride}_shape"
            inits.append(numpy_helper.from_array(np.array([-1, ch // 2], np.int64), shape_name))
            out = f"{kind}_{stride}"
            nodes.append(helper.make_node("Reshape", [f"{y}_t", shape_name], [out]))
            outs[kind].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"n{stride}", ch // 2]))
    return _save(path, nodes, inits,
                 [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
                 outs["score"] + outs["bbox"] + outs["kps"])


def _write_recognizer(path: Path, seed: int) -> Path:
    """ArcFace: a small random IResNet exported exactly like insightface's ArcFace files, (N,3,112,112) ->
    (N,512), so the torch backbone loader (:mod:`honestface_core.model.iresnet`) reads it too."""
    from .model.iresnet import write_arcface_onnx

    return write_arcface_onnx(path, seed=seed)


_WRITERS = {
    "detector": _write_scrfd,
    "recognizer": _write_recognizer,
    "2d106det.onnx": lambda p, s: _write_head_model(p, 192, 212, "data", 32, s),
    "1k3d68.onnx": lambda p, s: _write_head_model(p, 192, 3309, "data", 32, s),
    "genderage.onnx": lambda p, s: _write_head_model(p, 96, 3, "data", 16, s),
}


def write_insightface_test_models(models_dir: str | os.PathLike,
                                  packs: Sequence[str] = ("antelopev2", "buffalo_l")) -> list[Path]:
    """Write random-weight ONNX packs under ``models_dir/insightface/models/<pack>/`` with the real file names.

    The files load through insightface's own ``FaceAnalysis`` and run; what they detect or embed is
    meaningless (random weights, for wiring and tests only). Existing files are never overwritten.
    """
    jobs = []
    for pack in packs:
        if pack not in INSIGHTFACE_PACKS:
            raise HonestFaceError("packs", f"unknown insightface pack '{pack}'", f"Use one of {sorted(INSIGHTFACE_PACKS)}")
        for index, filename in enumerate(INSIGHTFACE_PACKS[pack]):
            path = pack_folder(models_dir, pack) / filename
            if path.exists():
                raise HonestFaceError(f"'{path}'", "already exists (it is never overwritten)",
                                      "Write test models into a new, empty folder")
            jobs.append((_WRITERS["detector" if index == 0 else "recognizer" if index == 1 else filename], path, index))
    return [write(path, index) for write, path, index in jobs]
