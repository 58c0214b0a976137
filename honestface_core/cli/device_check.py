"""Device check (``scripts/device_check.sh``): what a CUDA GPU does with HonestFace at the real SD-2.1 size.

For each precision (fp16, bf16) and without / with ``torch.compile`` of the UNet and the VAE: the bench's per-stage
timings, peak memory, pipeline overhead and batching ratios (:func:`honestface_core.cli.bench.bench_faces`) for 1, 4 and
16 faces at 512 px; the compile pass also reports its warm-up (first call) time. Then one real-size training step
(the trainer's own ``train_step``: bf16 autocast, batch and accumulation of ``training/configs/sd21_512.yaml``,
perceptual, identity, MFA and GAN terms, generator and discriminator updates) on random weights: time and peak
memory. Random weights throughout (timing does not depend on them); nothing is read from or written to disk.

A time budget (``--budget-s``, default 420 s) keeps the whole check under 8 minutes: a part that would start after
the budget is spent is skipped and named as skipped (our choice: a partial report beats a killed run).
``--dry-run`` runs the same code on the CPU with the tiny model, bf16, 1 and 2 faces, one repeat, one training step
at 64 px (CI checks the script this way; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from honestface_core.cli.bench import (Timer, bench_faces, bench_image, build_bench_model, device_name, find_detector,
                                       format_table, load_average)
from honestface_core.files.model_paths import default_models_dir

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "training" / "configs" / "sd21_512.yaml"


def face_counts(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (argparse type: a clear message for anything else)."""
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of positive face counts, e.g. 1,4,16")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="device_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 1 repeat: checks the script, not a device")
    p.add_argument("--faces", type=face_counts, default=None, help="face counts (default 1,4,16; dry run 1,2)")
    p.add_argument("--dtypes", default=None, help="precisions to measure (default fp16,bf16; dry run bf16)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; dry run 1)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile passes")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip parts that would start after this many seconds")
    return p.parse_args(argv)


def compile_generator(model) -> None:
    """``torch.compile`` the UNet and both halves of the VAE in place: the loader's ``compile_modules`` on CUDA; on
    the CPU dry run the ``eager`` backend (traces the same modules without generating code)."""
    if model.device.type == "cuda":
        model.generator.compile_modules()
        return
    vae = model.generator.vae
    for module in (model.generator.unet, vae.encoder, vae.decoder):
        module.compile(backend="eager")


def compile_and_warm_up(model) -> float:
    """:func:`compile_generator`, then one restore call of one face: its wall seconds (the compile's warm-up)."""
    from honestface_core.face.alignment import align_faces
    from honestface_core.face.references import ReferenceSet
    from honestface_core.pipeline import restore_crops

    compile_generator(model)
    image, faces = bench_image(1)
    crops = align_faces(image.to(model.device), faces).crops
    refs = ReferenceSet(crops, torch.nn.functional.normalize(torch.randn(1, model.config.identity.embedding_dim),
                                                             dim=-1), ["ref"], ["ref: ok"], "check")
    with torch.inference_mode():
        return Timer(model.device, 1, 0).once(lambda: restore_crops(model, crops, refs))[0]


def measure_restore(size: str, device: torch.device, dtype: torch.dtype, counts: list[int], repeats: int,
                    compiled: bool) -> dict:
    """The bench's report for one precision, eager or compiled (``compile_warmup_s``: the first restore call)."""
    model = build_bench_model(size, device, dtype)
    warmup_s = compile_and_warm_up(model) if compiled else None
    timer = Timer(device, repeats, 1, warm_each=compiled)
    detector = find_detector(default_models_dir())
    warnings: list[str] = []
    runs = [bench_faces(model, n, 4, timer, detector, 1 in counts, warnings) for n in counts]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"size": size, "device": str(device), "dtype": str(dtype).replace("torch.", ""), "repeats": repeats,
            "compiled": compiled, "compile_warmup_s": warmup_s, "runs": runs, "warnings": warnings}


def random_batches(batch: int, k: int, size: int, device: torch.device):
    """Endless training batches of random images in [-1, 1] with ``k`` references each (the dataset's keys)."""
    position = 0
    while True:
        def image(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, 3, size, size, device=device) * 2 - 1

        yield {"hq": image(batch), "lq": image(batch), "refs": image(batch, k),
               "ref_mask": torch.ones(batch, k, dtype=torch.bool, device=device),
               "position": torch.arange(position, position + batch)}
        position += batch


def training_step(size: str, device: torch.device, steps: int = 2, resolution: int | None = None) -> dict:
    """``steps`` real training steps (``Trainer.train_step``) on random weights at ``resolution`` px (default: the
    model's); the last one is timed (the first of two also allocates the optimiser states and selects kernels)."""
    from accelerate import Accelerator

    from training.config import load_config
    from training.discriminator import LatentDiscriminator
    from training.engine import EMA, Trainer
    from training.losses import EdgeAwareDISTS
    from training.modeling import TrainingForward
    from honestface_core.metrics.image_quality import DISTSMetric
    from honestface_core.model.reference_batch import model_resolution

    cfg = load_config(TRAIN_CONFIG)
    cfg.train.d_start_step = 0  # the step includes the discriminator's update
    trainer = Trainer.__new__(Trainer)  # the trainer's own step, without its dataset and weight files
    trainer.cfg, trainer.step, trainer.parser = cfg, 0, None
    trainer.acc = acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=device.type == "cpu")
    model = build_bench_model(size, acc.device, torch.float32)
    model.add_lora()
    trainer.model, trainer.backbone = model, model.backbone
    if cfg.train.gradient_checkpointing:
        model.generator.unet.enable_gradient_checkpointing()
        model.generator.vae.enable_gradient_checkpointing()
    dists = DISTSMetric()  # random VGG16 (same cost as the real one); alpha/beta > 0 as in DISTS's weights.pt
    for weight in (dists.alpha, dists.beta):
        weight.uniform_(0.1, 1.0)
    trainer.perceptual = EdgeAwareDISTS(dists).to(acc.device)
    trainer.disc = LatentDiscriminator(model.generator.vae.config.latent_channels, model.config.prompt_dim,
                                       trainer._alphas_cumprod(), cfg.discriminator.channels, cfg.discriminator.depth,
                                       cfg.discriminator.noise_t)
    o = cfg.optim
    trainer.opt_g = torch.optim.AdamW(trainer._param_groups(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    trainer.opt_d = torch.optim.AdamW(trainer.disc.parameters(), lr=cfg.discriminator.lr, betas=(0.0, 0.99))
    trainer.sched_g = torch.optim.lr_scheduler.LambdaLR(trainer.opt_g, lambda s: 1.0)
    trainer.forward, trainer.disc, trainer.opt_g, trainer.opt_d = acc.prepare(
        TrainingForward(model), trainer.disc, trainer.opt_g, trainer.opt_d)
    trainer.ema = EMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    resolution = resolution or model_resolution(model)
    batches = random_batches(cfg.train.batch_size, cfg.data.refs_max, resolution, acc.device)
    timer = Timer(acc.device, 1, 0)
    for _ in range(steps - 1):
        trainer.train_step(batches)
    wall, _, peak, logs = timer.once(lambda: trainer.train_step(batches))
    return {"seconds": wall, "peak_mib": peak, "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
            "mixed_precision": cfg.train.mixed_precision, "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "resolution": resolution, "loss_g": logs["loss_g"],
            "trainable_m": sum(p.numel() for p in model.trainable_parameters()) / 1e6}


def summary(reports: list[dict]) -> str:
    """One line per precision and compile mode: warm-up, overhead and batching per face count, peak memory."""
    lines = ["| dtype | torch.compile | warm-up s | faces | restore_crops s | per face s | overhead (paired) | "
             "one call / single calls (paired) | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for rep in reports:
        warm = "" if rep["compile_warmup_s"] is None else f"{rep['compile_warmup_s']:.1f}"
        for r in rep["runs"]:
            batching = r.get("batching_paired")
            lines.append(f"| {rep['dtype']} | {'on' if rep['compiled'] else 'off'} | {warm} | {r['faces']} | "
                         f"{r['restore_crops']['seconds']:.4f} | {r['per_face_one_call']:.4f} | "
                         f"{100 * (r['overhead_paired']['median'] - 1):+.1f}% | "
                         f"{'' if batching is None else format(batching['median'], '.3f')} | "
                         f"{r['restore_crops']['peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from honestface_core.devices import resolve_dtype

    args = parse_args(argv)
    start = time.perf_counter()
    if args.dry_run:
        device, size, counts, dtypes, steps, train_px = torch.device("cpu"), "tiny", [1, 2], "bf16", 1, 64
    else:
        if not torch.cuda.is_available():
            print("device_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU",
                  file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
        device, size, counts, dtypes, steps, train_px = torch.device("cuda"), "full", [1, 4, 16], "fp16,bf16", 2, None
    repeats = args.repeats or (1 if args.dry_run else 3)
    counts = args.faces or counts
    print(f"device check on {device} ({device_name(device)}), torch {torch.__version__}, size {size}, faces {counts}, "
          f"{repeats} repeat(s); load average {load_average()}")
    reports, skipped = [], []
    for dtype_name in (args.dtypes or dtypes).split(","):
        for compiled in (False,) if args.no_compile else (False, True):
            part = f"{dtype_name}{' + torch.compile' if compiled else ''}"
            if time.perf_counter() - start > args.budget_s:
                skipped.append(part)
                continue
            print(f"\n## {part}", flush=True)
            rep = measure_restore(size, device, resolve_dtype(dtype_name, device), counts, repeats, compiled)
            if compiled:
                print(f"torch.compile warm-up (first 1-face restore): {rep['compile_warmup_s']:.1f} s")
            print(format_table(rep), flush=True)
            reports.append(rep)
    print("\n## summary\n" + summary(reports))
    if time.perf_counter() - start > args.budget_s:
        skipped.append("training step")
    else:
        train = training_step(size, device, steps, train_px)
        print(f"\n## one training step ({train['mixed_precision']} autocast, batch {train['batch_size']} x "
              f"{train['grad_accum']} accumulation, {train['resolution']} px, gradient checkpointing "
              f"{'on' if train['gradient_checkpointing'] else 'off'}, {train['trainable_m']:.1f} M trainable, "
              f"random weights): {train['seconds']:.2f} s, peak {train['peak_mib']:.0f} MiB, loss_g {train['loss_g']:.3f}")
    if skipped:
        print(f"\nskipped (time budget of {args.budget_s:.0f} s spent): {', '.join(skipped)}")
    print(f"\ndevice check done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
