"""``honestface evaluate``: landmark, identity and image metrics of restored vs ground-truth folders.

Images are paired by file name, each face is aligned to a 512 crop and scored with the metrics whose weights are
present; a Markdown summary is printed and ``--out`` writes a JSON, CSV or Markdown report (docs/evaluation.md).
Options, the report path and image headers are checked before any model loads.
"""

from __future__ import annotations

import argparse

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.evaluate import AUTO_LANDMARKS, evaluate_folders
from honestface_core.metrics.reports import check_report_path, report_to_markdown, throughput_line, write_report


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to the ``honestface`` CLI."""
    from honestface_core.files.model_paths import default_models_dir

    p = subparsers.add_parser("evaluate", help="landmark (L2-LD, ALD, ALD-e, ALD-m), identity and image metrics of restored vs ground-truth folders",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--restored", required=True, help="folder of restored images")
    p.add_argument("--gt", required=True, help="folder of ground-truth images (paired by file name)")
    p.add_argument("--refs", help="folder of reference images (or one sub-folder per image name) for Ref-Deg")
    p.add_argument("--landmarks", default=AUTO_LANDMARKS, choices=(AUTO_LANDMARKS, "wflw98", "dlib68", "ins106", "ins68"),
                   help="landmark detector/scheme (default auto: wflw98, facexlib's AWing as prior work's LMD, when "
                        "models/facexlib/alignment_WFLW_4HG.pth is present, else dlib68; the report says which)")
    p.add_argument("--models", default=str(default_models_dir()), help="ComfyUI-style models/ folder")
    p.add_argument("--aligned", action="store_true", help="inputs are already aligned face crops (default: detect and align)")
    p.add_argument("--identity", default="auto", choices=("auto", "arcface", "sface", "none"),
                   help="identity encoder for Deg./Ref-Deg (auto: ArcFace if the insightface pack is present, else SFace)")
    p.add_argument("--insightface-pack", default="antelopev2", help="insightface pack folder name (antelopev2, buffalo_l)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--quality", default="MUSIQ,C-IQA,M-IQA",
                   help="no-reference metrics to compute when their files are present, comma-separated, each as a column "
                        "name or 'column (variant)', e.g. 'MUSIQ,C-IQA (clipiqa+)'; 'none' for none (M-IQA takes about "
                        "a minute per image on one CPU thread)")
    p.add_argument("--out", help="report file: .json, .csv or .md (the Markdown summary is always printed); an "
                   "existing file is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out report")
    p.set_defaults(func=_cmd_evaluate)
    return p


def quality_choices(text: str) -> list[str]:
    """``--quality``: ``"MUSIQ,C-IQA (clipiqa+)"`` -> checked choices; ``"none"`` -> []."""
    from honestface_core.metrics.no_reference import parse_choice

    if text.strip().lower() == "none":
        return []
    choices = [c.strip() for c in text.split(",") if c.strip()]
    columns = [parse_choice(c)[0] for c in choices]  # unknown names fail here, before any model is loaded
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise HonestFaceError("--quality", f"names {', '.join(twice)} more than once (one report column each)",
                              "Pick one variant per metric")
    return choices


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.out:  # before any model loads or image is read
        check_report_path(args.out, args.overwrite)
    if args.device != "auto":
        from honestface_core.devices import resolve_device

        resolve_device(args.device, "--device")
    quality = quality_choices(args.quality)
    report = evaluate_folders(args.restored, args.gt, args.refs, args.landmarks, args.models, args.aligned,
                              args.identity, args.insightface_pack, args.device, quality=quality)
    if report is None:  # non-main accelerate process
        return 0
    print(report_to_markdown(report))
    if args.out:
        print(f"wrote {write_report(report, args.out, args.overwrite)}")
    print(throughput_line(report["throughput"]))
    return 0
