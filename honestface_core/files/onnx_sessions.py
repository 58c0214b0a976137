"""onnxruntime, whichever build the user installed: import it with a clear error, pick the execution providers it
has, open sessions, and log once per model file which providers a session really runs on.

The pack does not require a particular onnxruntime distribution (see README "GPU execution" and
docs/face_pipeline.md): ``onnxruntime`` (CPU), ``onnxruntime-gpu`` (CUDA), ``onnxruntime-directml`` and
``onnxruntime-openvino`` all install the same ``onnxruntime`` module, and installing one over another overwrites
it, which is how a CPU build silently replaces a GPU one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from honestface_core.errors import HonestFaceError

logger = logging.getLogger(__name__)

#: PyPI distributions that install the ``onnxruntime`` module.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")

INSTALL_ONE = ("Install exactly one onnxruntime build into the Python that runs ComfyUI (or the CLI): "
               "`pip install onnxruntime-gpu` (NVIDIA), `onnxruntime-directml` (Windows, any GPU), "
               "`onnxruntime-openvino` (Intel) or `onnxruntime` (CPU only); see the README section 'GPU execution'")

_logged: set[tuple[str, tuple[str, ...]]] = set()
_warned_builds = False


def installed_builds() -> list[str]:
    """The onnxruntime distributions installed in this Python, as ``name==version``."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def import_onnxruntime():
    """``import onnxruntime``, or a :class:`HonestFaceError` that says which build to install.

    Warns once when several builds are installed: they share one ``onnxruntime`` folder, so whichever was
    installed last decides which providers exist.
    """
    global _warned_builds
    try:
        import onnxruntime
    except ImportError as err:
        raise HonestFaceError("onnxruntime", f"cannot be imported ({err}); it runs the ONNX face models "
                                             "(insightface packs, SFace)", INSTALL_ONE) from err
    builds = installed_builds()
    if not hasattr(onnxruntime, "InferenceSession"):
        raise HonestFaceError("onnxruntime", f"is a damaged install (installed: {', '.join(builds) or 'none'}); this "
                                             "happens when one onnxruntime build is removed after another was "
                                             "installed over it",
                              "Uninstall every onnxruntime build (`pip uninstall -y onnxruntime onnxruntime-gpu "
                              "onnxruntime-directml onnxruntime-openvino`), then install exactly one: "
                              + INSTALL_ONE.split(": ", 1)[1])
    if len(builds) > 1 and not _warned_builds:
        _warned_builds = True
        logger.warning("several onnxruntime builds are installed (%s); they overwrite each other's files, so the one "
                       "installed last decides whether the GPU is used. Keep one: uninstall all, then install the one "
                       "you want (README 'GPU execution').", ", ".join(builds))
    return onnxruntime


def usable_providers(providers: Sequence[str]) -> list[str]:
    """Requested providers that this onnxruntime has, CPU always last (our choice: unavailable ones are dropped
    with a warning instead of failing, so a workflow made on a GPU machine still runs on a CPU one)."""
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    usable = [p for p in providers if p in available and p != "CPUExecutionProvider"]
    dropped = [p for p in providers if p not in available]
    if dropped:
        logger.warning("onnxruntime providers %s are not in this onnxruntime build (%s; it has %s); using %s. "
                       "For GPU execution see the README section 'GPU execution'.", dropped,
                       ", ".join(installed_builds()) or "unknown build", sorted(available),
                       usable + ["CPUExecutionProvider"])
    return usable + ["CPUExecutionProvider"]


def log_session_providers(model_file: str | os.PathLike, session, requested: Sequence[str]) -> list[str]:
    """Log, once per model file and provider list, the providers ``session`` really runs on; a warning when a
    requested provider is not among them (onnxruntime silently falls back to CPU when e.g. the CUDA or cuDNN
    libraries are missing). Returns the session's providers."""
    actual = [str(p) for p in session.get_providers()]
    key = (str(Path(model_file).resolve()), tuple(actual))
    if key not in _logged:
        _logged.add(key)
        missing = [p for p in requested if p not in actual]
        if missing:
            logger.warning("ONNX model %s runs on %s, not on the requested %s: onnxruntime could not start them "
                           "(for CUDA: the CUDA/cuDNN libraries of this onnxruntime-gpu build are missing; see the "
                           "README section 'GPU execution')", Path(model_file).name, actual, missing)
        else:
            logger.info("ONNX model %s runs on %s", Path(model_file).name, actual)
    return actual


def load_onnx(path: str | os.PathLike):
    """Read an ONNX file with ``onnx``, or raise a :class:`HonestFaceError` naming the damaged file."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError and others for damaged files
        raise HonestFaceError(f"ONNX model '{path}'", f"cannot be read ({err})",
                              "Replace it with a fresh copy of the original file") from err


def prune_graph_inputs(model) -> None:
    """Remove, in place, graph inputs of an ``onnx.ModelProto`` that are weights (initializers) or that no node
    reads, and initializers that no node reads; every computation is unchanged.

    Some published files list stale weight names as inputs (opencv_zoo's block-quantized SFace lists the 29 float
    weights its DequantizeLinear nodes replaced): OpenCV 5 and onnxruntime then expect them to be fed.
    """
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    weights = {init.name for init in graph.initializer}
    keep_inputs = [i for i in graph.input if i.name in used and i.name not in weights]
    keep_inits = [init for init in graph.initializer if init.name in used]
    del graph.input[:]
    graph.input.extend(keep_inputs)
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)


def open_session(model_file: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",),
                 model_bytes: bytes | None = None):
    """An ``onnxruntime.InferenceSession`` for ``model_file`` (or for ``model_bytes`` read from it) on the usable
    ``providers``; logs once which providers it really runs on."""
    ort = import_onnxruntime()
    usable = usable_providers(providers)
    try:
        session = ort.InferenceSession(model_bytes if model_bytes is not None else str(model_file), providers=usable)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable or unsupported graphs
        raise HonestFaceError(f"ONNX model '{model_file}'", f"onnxruntime cannot load it ({err})",
                              "Replace it with a fresh copy of the original file") from err
    log_session_providers(model_file, session, usable)
    return session
