"""Landmark metrics on real photos with the real bundled dlib model, and ``honestface evaluate`` end to end."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import YuNetDetector, detect_faces
from honestface_core.files.images import load_image, tensor_to_uint8, uint8_to_tensor
from honestface_core.face.landmarks import DlibLandmarks
from honestface_core.metrics import landmark_distances
from honestface_core.metrics.evaluate import evaluate_folders
from honestface_core.metrics.reports import report_to_csv, report_to_markdown, write_report
from honestface_core.metrics.scoring import COLUMNS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dlib68(dlib68_path):
    return DlibLandmarks(dlib68_path)


@pytest.fixture(scope="module")
def crops(photos_dir, yunet_path):
    """FFHQ-aligned 512 crops (each face aligned with its own detection) as uint8: obama, obama JPEG q=30, biden."""
    det = YuNetDetector(yunet_path)

    def crop(name):
        t = uint8_to_tensor(load_image(photos_dir / name))
        return tensor_to_uint8(align_faces(t, detect_faces(det, t, "largest")).crops)[0]

    obama, biden = crop("obama.jpg"), crop("biden.jpg")
    return {"obama": obama, "obama_q30": _jpeg(obama, 30), "biden": biden}


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1])


def _lmk(detector, *imgs: np.ndarray) -> np.ndarray:
    pts = detector.detect(uint8_to_tensor(np.stack(imgs))).points
    assert not np.isnan(pts).any()
    return pts


def test_affine_warped_photo_has_small_ald_large_l2(dlib68, crops):
    gt = crops["obama"]
    m = cv2.getRotationMatrix2D((256, 256), 4, 0.93)
    m[0, 1] += 0.06  # shear
    m[:, 2] += [12, -8]
    warped = cv2.warpAffine(gt, m, (512, 512), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    pred, ref = _lmk(dlib68, warped, gt)
    r = landmark_distances(pred, ref, "dlib68")
    assert r["l2_ld"] > 20.0
    assert r["ald"] < 3.0 and r["ald"] < 0.1 * r["l2_ld"]  # detector noise only


def test_other_person_scores_higher_ald_than_jpeg_copy(dlib68, crops):
    gt, q30, other = _lmk(dlib68, crops["obama"], crops["obama_q30"], crops["biden"])
    same = landmark_distances(q30, gt, "dlib68")
    diff = landmark_distances(other, gt, "dlib68")
    assert diff["ald"] > 5.0 and diff["ald"] > 3 * same["ald"]
    assert diff["ald_m"] > 3 * same["ald_m"]


def test_no_face_crop_gives_nan_row(dlib68, crops):
    batch = uint8_to_tensor(np.stack([crops["obama"], np.full((512, 512, 3), 127, np.uint8)]))
    lm = dlib68.detect(batch)
    assert lm.points.shape == (2, 68, 2) and lm.scheme == "dlib68"
    assert lm.found.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------------------
# honestface evaluate
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory, photos_dir):
    """gt/ and restored/ with: a = JPEG q30 copy (restored at half size), b = another person, c = no face."""
    root = tmp_path_factory.mktemp("eval")
    (root / "gt").mkdir()
    (root / "restored").mkdir()
    obama = load_image(photos_dir / "obama.jpg")[:700, 100:800]
    h, w = obama.shape[:2]
    biden = cv2.resize(load_image(photos_dir / "biden.jpg")[250:1500], (w, h), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "gt" / "a.png"), obama[..., ::-1])
    small = cv2.resize(obama, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "restored" / "a.jpg"), small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])
    cv2.imwrite(str(root / "gt" / "b.png"), obama[..., ::-1])
    cv2.imwrite(str(root / "restored" / "b.png"), biden[..., ::-1])
    flat = np.full((128, 128, 3), 120, np.uint8)
    cv2.imwrite(str(root / "gt" / "c.png"), flat)
    cv2.imwrite(str(root / "restored" / "c.png"), flat)
    return root


@pytest.fixture(scope="module")
def report(folders, dists_files, tmp_path_factory):
    """Only DISTS's and MUSIQ's (random-weight) files; bundled YuNet, SFace and dlib; nothing downloaded."""
    from honestface_core.metrics.iqa_musiq import FILES, MUSIQMetric

    models = tmp_path_factory.mktemp("eval_models")
    for sub in dists_files[0].iterdir():
        (models / sub.name).symlink_to(sub)
    (models / "iqa").mkdir()
    torch.manual_seed(0)
    torch.save(MUSIQMetric().state_dict(), models / "iqa" / FILES["koniq10k"])
    os.environ["TORCH_HOME"] = str(models / "torch")
    return evaluate_folders(folders / "restored", folders / "gt", landmarks="dlib68", models_dir=models, progress=False)


def test_report_rows_counts_and_columns(report):
    rows = {r["file"]: r for r in report["rows"]}
    assert list(rows) == ["a", "b", "c"]
    assert rows["a"]["status"] == "ok" and any("resized" in n for n in rows["a"]["notes"])
    assert rows["c"]["status"] == "no face found in ground truth"
    assert report["no_face_in_ground_truth"] == 1
    assert report["no_face_found"] == report["no_face_in_ground_truth"] + report["no_landmarks_found"]
    assert report["images"] == 3 and report["evaluated"] == 3 - report["no_face_found"]
    hypothesis = ("ALD-e sum (hypothesis)", "ALD-m sum (hypothesis)")
    for col in ("PSNR", "SSIM", "Deg.", "L2-LD", "ALD (ours)", "ALD-e (ours)", "ALD-m (ours)") + hypothesis:
        assert col in report["columns"] and col in COLUMNS
        assert np.isfinite(rows["a"][col])
    # our ALD is labelled as ours everywhere; the paper's ALD-e / ALD-m names never hold our numbers
    assert not {"ALD", "ALD-e", "ALD-m"} & set(report["columns"]) and not {"ALD", "ALD-e", "ALD-m"} & set(rows["a"])
    assert report["columns"][-2:] == list(hypothesis)  # after every paper column and ours
    assert rows["a"]["ALD-e sum (hypothesis)"] == pytest.approx(36 * rows["a"]["ALD-e (ours)"])
    assert rows["a"]["ALD-m sum (hypothesis)"] == pytest.approx(20 * rows["a"]["ALD-m (ours)"])
    assert report["meta"]["landmarks"].startswith("dlib68 (DlibLandmarks")  # chosen explicitly: no auto note
    assert rows["a"]["ALD (ours)"] < 3.0 and rows["a"]["PSNR"] > 25
    # a different person (paired with the ground truth's alignment) is much worse on every axis
    b = rows["b"]
    assert b["PSNR"] < rows["a"]["PSNR"] and b["Deg."] > rows["a"]["Deg."] + 20
    if b["status"] == "ok":
        assert b["ALD (ours)"] > 2 * rows["a"]["ALD (ours)"]
    assert "sface" in report["meta"]["identity_encoder"]
    assert any(s.startswith("LPIPS skipped: weight file alexnet-owt-7be5be79.pth missing, put it in") for s in report["skipped"])
    assert not any(s.startswith("DISTS") for s in report["skipped"])
    assert report["columns"][:3] == ["DISTS", "MUSIQ", "Deg."]  # the paper's order; LPIPS, C-IQA, M-IQA, FID skipped
    assert np.isfinite(rows["a"]["MUSIQ"]) and rows["a"]["MUSIQ"] != b["MUSIQ"]
    assert report["meta"]["quality_metrics"] == ["MUSIQ (koniq10k)"]
    for col in ("C-IQA", "M-IQA"):
        assert any(s.startswith(f"{col} skipped: weight file ") and "iqa" in s for s in report["skipped"])
    assert 0 < rows["a"]["DISTS"] < b["DISTS"]  # a JPEG copy is closer than another person (random VGG weights)
    assert report["mean"]["PSNR"] == pytest.approx(np.mean([r["PSNR"] for r in report["rows"] if "PSNR" in r]))


def test_report_throughput(report):
    """Every pair counts (the one without a face too); pairs per second is over the pair loop, model loading apart."""
    t = report["throughput"]
    assert t["pairs"] == 3 and t["seconds"] > 0 and t["load_seconds"] > 0
    assert t["pairs_per_second"] == pytest.approx(3 / t["seconds"], rel=2e-3)  # both rounded to 3 decimals
    line = f"{t['pairs_per_second']:.2f} pairs per second"
    assert line in report_to_markdown(report) and line in list(csv.reader(io.StringIO(report_to_csv(report))))[-1][-1]


def test_report_formats(report, tmp_path):
    data = json.loads(write_report(report, tmp_path / "r.json").read_text())
    assert data["no_face_found"] == report["no_face_found"] and data["rows"][2]["status"].startswith("no face")
    rows = list(csv.reader(io.StringIO(report_to_csv(report))))
    assert rows[0][:2] == ["file", "status"] and "ALD-e (ours)" in rows[0] and rows[-1][0] == "mean" and len(rows) == 5
    md = report_to_markdown(report)
    assert "| **mean** |" in md and "ALD-m (ours)" in md and "ALD-m sum (hypothesis)" in md and "no face found: 1" in md
    with pytest.raises(Exception, match="unknown extension"):
        write_report(report, tmp_path / "r.txt")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "honestface_core.cli.main", "evaluate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_refuses_unpaired_folders(tmp_path, folders):
    (tmp_path / "r").mkdir()
    for name in ("a.png", "x.png"):
        (tmp_path / "r" / name).write_bytes((folders / "gt" / "c.png").read_bytes())
    from honestface_core.cli.main import main

    code = main(["evaluate", "--restored", str(tmp_path / "r"), "--gt", str(folders / "gt")])
    assert code == 2
    with pytest.raises(Exception, match=r"2 restored and 3 ground-truth images do not pair up.*\(x\).*\(b, c\)"):
        evaluate_folders(tmp_path / "r", folders / "gt")


@pytest.mark.opencv
def test_cli_end_to_end_aligned_with_refs(tmp_path, crops):
    """``--aligned`` crops of another size are resized (noted), refs give Ref-Deg, the Markdown is written."""
    for sub in ("gt", "res", "refs"):
        (tmp_path / sub).mkdir()
    for name, img in (("p1", crops["obama"]), ("p2", crops["obama"])):
        cv2.imwrite(str(tmp_path / "gt" / f"{name}.png"), img[..., ::-1])
    cv2.imwrite(str(tmp_path / "res" / "p1.png"), crops["obama_q30"][..., ::-1])
    cv2.imwrite(str(tmp_path / "res" / "p2.png"), cv2.resize(crops["biden"], (256, 256))[..., ::-1])
    cv2.imwrite(str(tmp_path / "refs" / "r1.png"), crops["obama"][..., ::-1])
    out = tmp_path / "report.md"
    proc = _cli("--restored", str(tmp_path / "res"), "--gt", str(tmp_path / "gt"), "--refs", str(tmp_path / "refs"),
                "--aligned", "--models", str(tmp_path / "models"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "Ref-Deg" in text and "rescaled to 512x512" in text and "| p1 | ok |" in text
    assert "evaluate" in proc.stderr  # tqdm progress bar
    assert re.fullmatch(r"2 pairs in [0-9.]+ s: [0-9.]+ pairs per second \(models loaded in [0-9.]+ s\)",
                        proc.stdout.strip().splitlines()[-1]), proc.stdout[-300:]


#: libraries of metrics, detectors and encoders that a run must import only when it uses them
METRIC_LIBRARIES = ("lpips", "torchvision", "pytorch_fid", "pyiqa", "DISTS_pytorch", "insightface", "facexlib", "scipy",
                    "accelerate", "onnx", "onnxruntime", "dlib")


def test_cli_imports_only_the_libraries_of_the_metrics_it_runs(tmp_path, crops, dists_files):
    """A run with DISTS's files present (LPIPS's and FID's missing), dlib landmarks, SFace, no quality metrics:
    dlib and onnxruntime are imported (used), DISTS runs on our own VGG; lpips, torchvision (FID's Inception),
    insightface, facexlib and the rest are never imported."""
    for sub in ("gt", "res"):
        (tmp_path / sub).mkdir()
    cv2.imwrite(str(tmp_path / "gt" / "p.png"), crops["obama"][..., ::-1])
    cv2.imwrite(str(tmp_path / "res" / "p.png"), crops["obama_q30"][..., ::-1])
    models = tmp_path / "models"
    models.mkdir()
    for sub in dists_files[0].iterdir():
        (models / sub.name).symlink_to(sub)
    out = tmp_path / "r.json"
    code = ("import json, sys\nfrom honestface_core.cli.main import main\n"
            f"code = main(['evaluate', '--restored', {str(tmp_path / 'res')!r}, '--gt', {str(tmp_path / 'gt')!r}, "
            f"'--aligned', '--landmarks', 'dlib68', '--identity', 'sface', '--quality', 'none', '--models', {str(models)!r}, "
            f"'--out', {str(out)!r}])\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\nsys.exit(code)")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}  # no torchvision / pytorch-fid cache
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = set(json.loads(proc.stdout.strip().splitlines()[-1])) & set(METRIC_LIBRARIES)
    assert imported == {"dlib", "onnx", "onnxruntime"}  # dlib 68 landmarks; SFace (onnx reads its file)
    report = json.loads(out.read_text())
    assert "DISTS" in report["columns"] and "Deg." in report["columns"]
    assert {s.split()[0] for s in report["skipped"] if " skipped: weight file " in s} >= {"LPIPS", "FID"}


@pytest.mark.slow
def test_accelerate_launch_splits_and_gathers(tmp_path, crops):
    pytest.importorskip("accelerate")
    for sub in ("gt", "res"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "gt" / f"f{i}.png"), crops["obama"][..., ::-1])
        cv2.imwrite(str(tmp_path / "res" / f"f{i}.png"), crops["obama_q30"][..., ::-1])
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "honestface_core.cli.main", "evaluate",
           "--restored", str(tmp_path / "res"), "--gt", str(tmp_path / "gt"), "--aligned", "--identity", "none",
           "--models", str(tmp_path / "models"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["file"] for r in data["rows"]] == ["f0", "f1", "f2"] and data["evaluated"] == 3
    assert proc.stdout.count("# HonestFace evaluation") == 1  # only the main process reports


def test_quality_option(tmp_path, folders, capsys, monkeypatch):
    from honestface_core.cli.main import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no pyiqa cache
    from honestface_core.cli.evaluate import quality_choices

    assert quality_choices("none") == [] and quality_choices(" MUSIQ , C-IQA (clipiqa+)") == ["MUSIQ", "C-IQA (clipiqa+)"]
    for bad, match in (("MUSIQ,MUSIQ (ava)", "MUSIQ more than once"), ("BRISQUE", "'BRISQUE' is unknown")):
        assert main(["evaluate", "--restored", str(folders / "restored"), "--gt", str(folders / "gt"),
                     "--quality", bad]) == 2
        assert match in capsys.readouterr().err
    report = evaluate_folders(folders / "restored", folders / "gt", models_dir=tmp_path / "models", identity="none",
                              progress=False, quality=["M-IQA (pipal)"])
    assert report["meta"]["quality_metrics"] == []
    assert any(s.startswith("M-IQA skipped: weight file MANIQA_PIPAL-ae6d356b.pth missing") for s in report["skipped"])
    assert not any(s.startswith(("MUSIQ", "C-IQA")) for s in report["skipped"])


def test_cli_out_and_device_are_checked_before_any_work(tmp_path, folders, capsys):
    """Bad --out / --device: exit 2 with one error line naming it, before any image is read (nothing printed),
    nothing written or changed."""
    from honestface_core.cli.main import main

    (tmp_path / "old.json").write_bytes(b'{"keep": 1}')
    (tmp_path / "a_file").write_bytes(b"x")
    (tmp_path / "link.md").symlink_to(tmp_path / "elsewhere.md")
    before = {p.name: (p.is_symlink(), p.lstat().st_mtime_ns) for p in tmp_path.iterdir()}
    cases = ((["--out", str(tmp_path / "old.json")], ["--out", "old.json", "already exists", "--overwrite"]),
             (["--out", str(tmp_path / "link.md"), "--overwrite"], ["--out", "link.md", "symbolic link"]),
             (["--out", str(tmp_path / "a_file" / "r.csv")], ["--out", "is a file"]),
             (["--out", str(tmp_path / "r.txt")], ["--out", "unknown extension"]),
             (["--device", "meta"], ["--device", "'meta'"]))
    for extra, names in cases:
        code = main(["evaluate", "--restored", str(folders / "restored"), "--gt", str(folders / "gt"), *extra])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: ") and all(n in line for n in names), line
    assert before == {p.name: (p.is_symlink(), p.lstat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert (tmp_path / "old.json").read_bytes() == b'{"keep": 1}'


def test_cli_overwrite_replaces_an_existing_report(tmp_path, crops, capsys):
    from honestface_core.cli.main import main

    for sub in ("gt", "res"):
        (tmp_path / sub).mkdir()
    cv2.imwrite(str(tmp_path / "gt" / "p.png"), crops["obama"][..., ::-1])
    cv2.imwrite(str(tmp_path / "res" / "p.png"), crops["obama_q30"][..., ::-1])
    out = tmp_path / "report.json"
    out.write_text("old")
    out.chmod(0o640)
    args = ["evaluate", "--restored", str(tmp_path / "res"), "--gt", str(tmp_path / "gt"), "--aligned",
            "--identity", "none", "--quality", "none", "--models", str(tmp_path / "models"), "--out", str(out)]
    assert main(args) == 2 and out.read_text() == "old"
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(out.read_text())["rows"][0]["file"] == "p" and f"wrote {out}" in capsys.readouterr().out
    assert out.stat().st_mode & 0o777 == 0o640 and sorted(p.name for p in tmp_path.iterdir()) == ["gt", "report.json", "res"]


def test_landmarks_auto_is_prior_works_awing_when_present(tmp_path):
    """``--landmarks auto`` (the default) is wflw98 when facexlib's AWing file is there, else dlib68 with the reason."""
    from honestface_core.metrics.evaluate import resolve_landmarks

    scheme, note = resolve_landmarks("auto", tmp_path)
    assert scheme == "dlib68" and "alignment_WFLW_4HG.pth not found" in note and str(tmp_path / "facexlib") in note
    (tmp_path / "facexlib").mkdir()
    (tmp_path / "facexlib" / "alignment_WFLW_4HG.pth").write_bytes(b"x")
    scheme, note = resolve_landmarks("auto", tmp_path)
    assert scheme == "wflw98" and "AWing" in note and "LMD" in note
    assert resolve_landmarks("dlib68", tmp_path) == ("dlib68", "dlib68")


def test_batch_report_counts_every_image_and_renames_our_ald():
    """The node's report from the core builder: an image without a face has None everywhere (even where a value was
    computed on its blank crop), one without landmarks keeps its PSNR; means use the finite values; our ALD is
    reported as "(ours)"; the scores are not changed."""
    from honestface_core.metrics.reports import batch_report
    from honestface_core.metrics.scoring import CropScores

    pts = np.zeros((3, 68, 2))
    pts[2] = np.nan  # image 2: no landmarks
    values = {"PSNR": np.array([30.0, 99.0, 20.1234567]), "ALD": np.array([1.0, 5.0, np.nan])}
    scores = CropScores(values, pts.copy(), pts.copy(), "dlib68")
    r = batch_report(scores, [1], "dlib68", "sface", "aligned crops", ["a note"])
    assert r["no_face_images"] == [1] and r["no_landmarks_images"] == [2] and r["images"] == 3
    assert r["per_image"] == {"PSNR": [30.0, None, 20.123457], "ALD (ours)": [1.0, None, None]}
    assert r["mean"] == {"PSNR": round((30.0 + 20.1234567) / 2, 6), "ALD (ours)": 1.0}
    assert (r["scheme"], r["landmark_model"], r["identity_encoder"], r["notes"]) == ("dlib68", "dlib68", "sface", ["a note"])
    assert values["PSNR"][1] == 99.0 and json.loads(json.dumps(r)) == r
