"""Render the template thumbnails (``workflows/<name>.jpg``, what ComfyUI's template browser shows) from real photos
run through the example workflows in a real ComfyUI (``tests/comfy_harness.py``; OpenCV YuNet/SFace and dlib ship
in pip packages, the other models are the random-weight test models).

- *Detect faces and paste back* and *Evaluate a restoration* run as they are, on insightface's ``t1.jpg`` (six
  people) and on skimage's astronaut with a degraded copy as the "restored" image; the thumbnails show their
  outputs (and the scores the evaluation shows on its nodes).
- The two restore workflows need the trained HonestFace weights, which are not published: with the random test
  weights their output is noise. Their thumbnails therefore show, honestly labelled, what the workflow starts from
  (a degraded photo; for the reference workflow also the aligned reference crops its Load References node makes)
  and the face crop the model restores in one step and pastes back (the workflow's detection stage, run with the
  same OpenCV loader). *Restore a group photo* likewise shows a degraded ``t1.jpg`` and its aligned faces, each of
  which the workflow matches to a person of its identity library.

    .venv/bin/python scripts/render_thumbnails.py [NAME ...]   (only the named thumbnails; default: all)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import comfy_harness  # noqa: E402

SIDE = 384
DARK = (24, 28, 38)


def degrade(img: Image.Image) -> Image.Image:
    """A real degradation: 3x down, blur, JPEG q=25, back up."""
    small = img.resize((img.width // 3, img.height // 3), Image.BICUBIC).filter(ImageFilter.GaussianBlur(0.6))
    path = Path(tempfile.mkstemp(suffix=".jpg")[1])
    small.save(path, quality=25)
    return Image.open(path).convert("RGB").resize(img.size, Image.BICUBIC)


def images_of(entry: dict, server: comfy_harness.ComfyServer, node: str) -> list[Image.Image]:
    """The images node ``node`` returned (saved outputs and previews) in a finished prompt's history entry."""
    out = []
    for img in entry["outputs"].get(node, {}).get("images", []):
        folder = server.output_dir if img["type"] == "output" else server.base_dir / "temp"
        out.append(Image.open(folder / img.get("subfolder", "") / img["filename"]).convert("RGB"))
    return out


def run(server: comfy_harness.ComfyServer, prompt: dict) -> dict:
    entry = server.run_prompt(prompt)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(json.dumps(entry["status"])[:2000])
    return entry


def caption(canvas: Image.Image, lines: list[str]) -> Image.Image:
    """``canvas`` with a dark band of text lines under it, fitted back to SIDE x SIDE."""
    size = max(14, canvas.width // 26)  # about 15 px once fitted to SIDE
    font = ImageFont.load_default(size=size)
    step = round(size * 1.3)
    band = Image.new("RGB", (canvas.width, size // 2 + step * len(lines)), DARK)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((size // 2, size // 4 + i * step), line, fill=(235, 235, 235), font=font)
    out = Image.new("RGB", (canvas.width, canvas.height + band.height), DARK)
    out.paste(canvas, (0, 0))
    out.paste(band, (0, canvas.height))
    out.thumbnail((SIDE, SIDE), Image.LANCZOS)
    square = Image.new("RGB", (SIDE, SIDE), DARK)
    square.paste(out, ((SIDE - out.width) // 2, (SIDE - out.height) // 2))
    return square


def row(images: list[Image.Image], height: int) -> Image.Image:
    scaled = [im.resize((round(im.width * height / im.height), height), Image.LANCZOS) for im in images]
    out = Image.new("RGB", (sum(s.width for s in scaled) + 6 * (len(scaled) - 1), height), DARK)
    x = 0
    for s in scaled:
        out.paste(s, (x, 0))
        x += s.width + 6
    return out


def stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    width = max(top.width, bottom.width)
    out = Image.new("RGB", (width, top.height + bottom.height + 6), DARK)
    out.paste(top, ((width - top.width) // 2, 0))
    out.paste(bottom, ((width - bottom.width) // 2, top.height + 6))
    return out


def detect_prompt(image: str, opencv: dict) -> dict:
    """The restore workflows' detection stage: Load Image -> the OpenCV loader -> Detect Faces -> preview."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "HonestFaceOpenCVLoader", "inputs": opencv},
            "3": {"class_type": "HonestFaceDetectFaces", "inputs": {"image": ["1", 0], "faces": "all", "crop_size": 512,
                                                                    "opencv": ["2", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def main(names: list[str]) -> None:
    import insightface
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    group = Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB")
    opencv = {"detector": "face_detection_yunet_2023mar.onnx", "recognizer": "face_recognition_sface_2021dec.onnx",
              "score_threshold": 0.6}
    thumbs = {}
    with tempfile.TemporaryDirectory() as tmp, comfy_harness.ComfyServer(Path(tmp)) as server:
        group.save(server.input_dir / "group.png")
        name = "Detect faces and paste back"
        prompt = comfy_harness.load_api_workflow(f"{name}.json")
        prompt["1"]["inputs"]["image"] = "group.png"
        entry = run(server, prompt)
        crops = images_of(entry, server, "6")
        photo = images_of(entry, server, "5")[0]
        thumbs[name] = caption(stack(photo, row(crops, photo.width // (len(crops) + 1))),
                               [f"{len(crops)} faces found, aligned to 512 crops, pasted back"])

        astronaut.save(server.input_dir / "ground_truth.png")
        degrade(astronaut).save(server.input_dir / "restored.png")
        name = "Evaluate a restoration"
        entry = run(server, comfy_harness.load_api_workflow(f"{name}.json"))
        lm = entry["outputs"]["5"]["summary"][0].splitlines()[1].replace("image 0: ", "")
        sim = entry["outputs"]["7"]["summary"][0].splitlines()[1].split(": ", 1)[1]
        thumbs[name] = caption(images_of(entry, server, "6")[0], [lm, f"identity (SFace): {sim}"])

        low = degrade(astronaut)
        low.save(server.input_dir / "low.png")
        face = images_of(run(server, detect_prompt("low.png", opencv)), server, "4")[0]
        thumbs["Restore faces (blind)"] = caption(row([low, face], 300), [
            "degraded photo  |  the face the model restores", "in one step and pastes back (trained weights needed)"])

        refs = server.input_dir / "refs"
        refs.mkdir()
        astronaut.transpose(Image.FLIP_LEFT_RIGHT).save(refs / "mirrored.png")
        astronaut.crop((40, 0, 512, 472)).rotate(8, Image.BICUBIC).save(refs / "tilted.png")
        prompt = detect_prompt("low.png", opencv)
        prompt["5"] = {"class_type": "HonestFaceLoadReferences", "inputs": {"folder": "refs", "top_k": 0, "crop_size": 512,
                                                                           "opencv": ["2", 0]}}
        prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}}
        entry = run(server, prompt)
        thumbs["Restore faces with reference photos"] = caption(
            stack(row([low, images_of(entry, server, "4")[0]], 250), row(images_of(entry, server, "6"), 120)),
            ["degraded photo, its face, and the reference crops", "that keep the identity (trained weights needed)"])

        low_group = degrade(group)
        low_group.save(server.input_dir / "low_group.png")
        crops = images_of(run(server, detect_prompt("low_group.png", opencv)), server, "4")
        thumbs["Restore a group photo"] = caption(stack(low_group, row(crops, low_group.width // (len(crops) + 1))), [
            "degraded group photo and its faces, each matched",
            "to a person's references and restored", "in one batch (trained weights needed)"])
    for name, img in thumbs.items():
        if names and name not in names:
            continue
        img.save(REPO / "workflows" / f"{name}.jpg", quality=88)
        print(f"wrote workflows/{name}.jpg")


if __name__ == "__main__":
    main(sys.argv[1:])
