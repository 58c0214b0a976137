"""onnxruntime, whichever build is installed: clear errors when it is missing or damaged, a warning when several
builds share its folder, and the providers each session really runs on."""

from __future__ import annotations

import logging
import sys
import types
from importlib import metadata

import pytest

from honestface_core.files import onnx_sessions
from honestface_core.errors import HonestFaceError
from honestface_core.files.onnx_sessions import (import_onnxruntime, installed_builds, load_onnx, log_session_providers,
                                           open_session, prune_graph_inputs)


def test_missing_onnxruntime_names_the_builds_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import` sees when no build is installed
    with pytest.raises(HonestFaceError) as err:
        import_onnxruntime()
    msg = str(err.value)
    assert "onnxruntime: cannot be imported" in msg
    assert all(f"`{b}`" in msg or f"install {b}`" in msg for b in ("onnxruntime-gpu", "onnxruntime-directml", "onnxruntime"))


def test_damaged_onnxruntime_folder_is_explained(monkeypatch):
    # removing one build after another was installed over it leaves an `onnxruntime` folder without its files:
    # Python then imports it as an empty namespace package
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    with pytest.raises(HonestFaceError, match="damaged install") as err:
        import_onnxruntime()
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in str(err.value)


def test_several_builds_installed_warns_once(monkeypatch, tmp_path, caplog):
    # a second distribution record for the same `onnxruntime` module, as `pip install onnxruntime-gpu` leaves it
    info = tmp_path / "onnxruntime_gpu-1.20.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.20.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(onnx_sessions, "_warned_builds", False)
    assert "onnxruntime-gpu==1.20.1" in installed_builds()
    with caplog.at_level(logging.WARNING, logger="honestface_core.files.onnx_sessions"):
        import_onnxruntime()
        import_onnxruntime()
    [warning] = [r.getMessage() for r in caplog.records]
    assert "several onnxruntime builds are installed" in warning
    assert f"onnxruntime=={metadata.version('onnxruntime')}" in warning and "onnxruntime-gpu==1.20.1" in warning


def test_requested_provider_the_session_did_not_get_is_a_warning(sface_path, tmp_path, caplog):
    """onnxruntime-gpu without its CUDA libraries: CUDA was asked for, the session runs on CPU."""
    copy = tmp_path / "model.onnx"
    copy.write_bytes(sface_path.read_bytes())
    model = load_onnx(copy)
    prune_graph_inputs(model)
    session = open_session(copy, model_bytes=model.SerializeToString())
    with caplog.at_level(logging.INFO, logger="honestface_core.files.onnx_sessions"):
        caplog.clear()
        actual = log_session_providers(copy, session, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert actual == ["CPUExecutionProvider"]
    assert caplog.records == []  # this file and provider list were logged once already, by open_session
    copy2 = tmp_path / "model2.onnx"
    copy2.write_bytes(copy.read_bytes())
    with caplog.at_level(logging.INFO, logger="honestface_core.files.onnx_sessions"):
        log_session_providers(copy2, session, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "model2.onnx runs on ['CPUExecutionProvider'], not on the requested ['CUDAExecutionProvider']" in record.getMessage()


def test_pruning_keeps_the_graph_and_drops_stale_inputs(sface_path):
    """opencv_zoo's block-quantized SFace lists 29 float weights its DequantizeLinear nodes replaced as inputs."""
    model = load_onnx(sface_path)
    consumed = {name for node in model.graph.node for name in node.input}
    stale = [i.name for i in model.graph.input if i.name not in consumed]
    assert len(stale) == 29 and "conv_1_conv2d_weight" in stale
    nodes_before = len(model.graph.node)
    prune_graph_inputs(model)
    assert [i.name for i in model.graph.input] == ["data"] and len(model.graph.node) == nodes_before


def test_unreadable_onnx_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(HonestFaceError, match="broken.onnx.*cannot be read"):
        load_onnx(bad)
    with pytest.raises(HonestFaceError, match="onnxruntime cannot load it"):
        open_session(bad)
