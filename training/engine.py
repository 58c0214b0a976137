"""Stage-2 trainer: the HonestFace generator (UNet LoRA, embedders, fusion, projector) against a latent
discriminator conditioned on the prompt, updated alternately (G step, then D step on the same batch).

Runs on one device with plain ``python`` or on many with ``accelerate launch`` (DDP; FSDP via an accelerate
config). Mixed precision and gradient accumulation are handled here; checkpoints are atomic and resume exactly
(model, EMA, discriminator, optimisers, scheduler, RNG and data position; see :mod:`training.checkpoint`).
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from honestface_core.errors import HonestFaceError
from honestface_core.files.model_paths import default_models_dir
from training import checkpoint as ckpt
from training.config import TrainConfig, config_to_dict
from training.data import FaceRestorationDataset, PositionSampler
from training.discriminator import LatentDiscriminator
from training.losses import (build_perceptual, discriminator_loss, generator_gan_loss, identity_loss, mfa_loss)
from training.modeling import TrainingForward, build_model, face_region_mask, load_face_parser


class EMA:
    """Exponential moving average of the trainable parameters (float32 copies)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self, module: nn.Module) -> None:
        """Exchange the module's weights with the EMA weights (call twice to restore)."""
        for n, p in module.named_parameters():
            if n in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[n].to(p.dtype))
                self.shadow[n].copy_(tmp.float())


def _image_row(t: torch.Tensor) -> np.ndarray:
    return ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


class Trainer:
    """Build everything from a :class:`TrainConfig`, optionally resuming from a checkpoint, and train.

    Args:
        cfg: the training config.
        output: run folder (``checkpoints/``, ``logs/train.jsonl``, ``samples/``, ``config.yaml``, ``cache/``).
        resume: a run folder or a ``checkpoints/step_*`` folder to continue from (exactly).
        aligner_factory: override the face aligner used to build the crop cache (tests use pre-aligned data).
    """

    def __init__(self, cfg: TrainConfig, output: str | Path, resume: str | Path | None = None,
                 aligner_factory: Callable | None = None, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg, self.output = cfg, Path(output)
        tc = cfg.train
        if tc.mixed_precision not in ("no", "fp16", "bf16"):
            raise HonestFaceError("config 'train.mixed_precision'", f"unknown value {tc.mixed_precision!r}", "Use no, fp16 or bf16")
        self.acc = accelerator or Accelerator(
            mixed_precision=tc.mixed_precision, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.main = self.acc.is_main_process
        self.output.mkdir(parents=True, exist_ok=True)
        self.log_file = self.output / "logs" / "train.jsonl"
        if self.main:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            (self.output / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

        # loss files, then data: a missing file or a dataset with nothing usable fails before any model is built
        self.perceptual = (build_perceptual(cfg.losses, cfg.data.models_dir or default_models_dir())
                           if cfg.losses.perceptual > 0 else nn.Identity())
        kwargs = {"aligner_factory": aligner_factory} if aligner_factory else {}
        # process 0 first: it aligns the crop cache and writes the tiny base; the others then read both
        with self._main_process_first():
            self.dataset = FaceRestorationDataset(cfg.data, cfg.degradation, cfg.seed,
                                                  cfg.data.cache_dir or self.output / "cache", log=self.print, **kwargs)
            torch.manual_seed(cfg.seed)
            self.model = build_model(cfg, self.output, self.dataset)
        if tc.gradient_checkpointing:
            self.model.generator.unet.enable_gradient_checkpointing()
            self.model.generator.vae.enable_gradient_checkpointing()
        self.forward = TrainingForward(self.model)
        alphas = self._alphas_cumprod()
        self.disc = LatentDiscriminator(self.model.generator.vae.config.latent_channels, self.model.config.prompt_dim,
                                        alphas, cfg.discriminator.channels, cfg.discriminator.depth, cfg.discriminator.noise_t)
        self.backbone = self.model.backbone
        self.parser = load_face_parser(cfg.losses.parser, cfg.data.models_dir or default_models_dir()) if cfg.losses.parser else None

        o = cfg.optim
        self.opt_g = torch.optim.AdamW(self._param_groups(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.n_trainable = sum(p.numel() for g in self.opt_g.param_groups for p in g["params"])
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.discriminator.lr, betas=(0.0, 0.99), weight_decay=0.0)
        warm = max(0, o.warmup_steps)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)

        if self.acc.process_index > 0:  # our choice: every process draws its own discriminator noise
            torch.manual_seed(cfg.seed + self.acc.process_index)
        self.step = 0
        ema_state = self._load(resume) if resume is not None else None
        # DDP broadcasts process 0's weights here; the EMA starts from these synchronised weights
        self.forward, self.disc, self.opt_g, self.opt_d = self.acc.prepare(self.forward, self.disc, self.opt_g, self.opt_d)
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        if self.ema is not None and ema_state is not None:
            self.ema.shadow = {k: v.float().to(self.acc.device) for k, v in ema_state.items()}
        self.perceptual.to(self.acc.device)
        if self.parser is not None:
            self.parser.to(self.acc.device)
        self.print(f"trainable parameters: {self.n_trainable / 1e6:.2f} M (generator), "
                   f"{sum(p.numel() for p in self.disc.parameters()) / 1e6:.2f} M (discriminator); "
                   f"{len(self.dataset)} samples; device {self.acc.device}, {self.acc.num_processes} process(es)")

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _main_process_first(self) -> Iterator[None]:
        """Process 0 runs the block, then the others. If process 0 stops (bad input), the others stop with a
        pointer to its message instead of a distributed-backend traceback."""
        if not self.main:
            try:
                self.acc.wait_for_everyone()
            except RuntimeError as err:  # torch.distributed's errors when process 0 is gone
                raise HonestFaceError(f"training process {self.acc.process_index}", "process 0 stopped during setup",
                                      "See process 0's error above") from err
        yield
        if self.main:
            self.acc.wait_for_everyone()

    def print(self, msg: str) -> None:
        if self.acc is None or self.acc.is_main_process:
            tqdm.write(msg)

    def _alphas_cumprod(self) -> torch.Tensor:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.model.config.generator.scheduler).alphas_cumprod

    def _loader(self):
        tc = self.cfg.train
        sampler = PositionSampler(tc.batch_size, start=self.step * tc.grad_accum, rank=self.acc.process_index,
                                  world=self.acc.num_processes)
        # a private generator: creating the iterator must not consume the global RNG (exact resume)
        return iter(torch.utils.data.DataLoader(self.dataset, batch_size=tc.batch_size, sampler=sampler,
                                                num_workers=self.cfg.data.num_workers,
                                                generator=torch.Generator().manual_seed(self.cfg.seed),
                                                persistent_workers=self.cfg.data.num_workers > 0))

    def _param_groups(self) -> list[dict]:
        """Trainable generator parameters: the prompt modules at ``optim.lr``, the UNet LoRA at ``optim.lora_lr``
        (when > 0; see :class:`training.config.OptimConfig`)."""
        lora, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (lora if ".lora_A." in name or ".lora_B." in name else rest).append(p)
        lr = self.cfg.optim.lr
        groups = [{"params": rest, "lr": lr}, {"params": lora, "lr": self.cfg.optim.lora_lr or lr}]
        return [g for g in groups if g["params"]]

    def _global_logs(self, logs: dict[str, float], positions: torch.Tensor) -> dict:
        """The step's terms averaged over all processes, plus the sample positions each process trained on
        (``positions``: one list per process)."""
        keys = sorted(logs)
        values = self.acc.reduce(torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.acc.device), "mean")
        out = dict(zip(keys, values.tolist()))
        out["positions"] = self.acc.gather(positions.to(self.acc.device)).view(self.acc.num_processes, -1).tolist()
        return out

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device, non_blocking=True) for k, v in batch.items()}

    def _mask(self, hq: torch.Tensor) -> torch.Tensor:
        return face_region_mask(hq, self.parser)

    # ------------------------------------------------------------------ one step
    def generator_losses(self, batch: dict, use_gan: bool) -> tuple[torch.Tensor, dict, tuple]:
        """Forward the generator on a batch and return (total loss, float terms, tensors for the D step)."""
        lc = self.cfg.losses
        hq = batch["hq"]
        restored, z_hat, prompt, z_h = self.forward(batch["lq"], batch["refs"], batch["ref_mask"], hq)
        restored = restored.float()
        terms = {"mse": F.mse_loss(restored, hq)}
        if lc.perceptual > 0:
            terms["per"] = self.perceptual(restored, hq)
        if lc.identity > 0:
            with torch.no_grad():
                emb_real = self.backbone.embed(hq)
            terms["id"] = identity_loss(self.backbone.embed(restored), emb_real)
        if lc.mfa > 0:
            terms["mfa"] = mfa_loss(self.backbone, restored, hq, self._mask(hq))
        if use_gan and lc.gan > 0:
            # the plain module, not the DDP wrapper: D is frozen here and its gradients must not be synchronised
            disc = self.acc.unwrap_model(self.disc).requires_grad_(False)
            z_t, t = disc.noise(z_hat.float())
            terms["gan"] = generator_gan_loss(disc(z_t, prompt.float(), t), lc.gan_type)
            disc.requires_grad_(True)
        weights = {"mse": lc.mse, "per": lc.perceptual, "id": lc.identity, "mfa": lc.mfa, "gan": lc.gan}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}, (z_hat.detach().float(), z_h.detach().float(), prompt.detach().float())

    def discriminator_loss(self, z_fake: torch.Tensor, z_real: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        d = self.acc.unwrap_model(self.disc)
        zr_t, tr = d.noise(z_real)
        zf_t, tf = d.noise(z_fake)
        real = self.disc(zr_t, prompt, tr)
        fake = self.disc(zf_t, prompt, tf)
        loss = discriminator_loss(real, fake, self.cfg.losses.gan_type)
        return loss, {"d": float(loss.detach()), "d_real": float(real.detach().mean()), "d_fake": float(fake.detach().mean())}

    def train_step(self, loader) -> dict:
        """One optimiser step of G then D over ``grad_accum`` micro-batches."""
        tc, acc = self.cfg.train, self.acc
        use_gan = self.step >= tc.d_start_step and self.cfg.losses.gan > 0
        logs: dict[str, float] = {}
        saved, positions = [], []
        self.forward.train()
        for micro in range(tc.grad_accum):
            batch = self._to_device(next(loader))
            positions.append(batch["position"])
            sync = nullcontext() if micro == tc.grad_accum - 1 else acc.no_sync(self.forward)
            with sync, acc.autocast():
                loss, terms, tensors = self.generator_losses(batch, use_gan)
                acc.backward(loss / tc.grad_accum)
            saved.append(tensors)
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + v / tc.grad_accum
            logs["loss_g"] = logs.get("loss_g", 0.0) + float(loss.detach()) / tc.grad_accum
        if tc.grad_accum and self.cfg.optim.grad_clip > 0:
            logs["grad_norm_g"] = float(acc.clip_grad_norm_([p for p in self.forward.parameters() if p.requires_grad],
                                                            self.cfg.optim.grad_clip))
        self.opt_g.step()
        self.sched_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        if use_gan:
            for micro, (z_fake, z_real, prompt) in enumerate(saved):
                sync = nullcontext() if micro == len(saved) - 1 else acc.no_sync(self.disc)
                with sync, acc.autocast():
                    loss_d, terms = self.discriminator_loss(z_fake, z_real, prompt)
                    acc.backward(loss_d / len(saved))
                for k, v in terms.items():
                    logs[k] = logs.get(k, 0.0) + v / len(saved)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        self.step += 1
        logs = self._global_logs(logs, torch.cat(positions))
        lrs = self.sched_g.get_last_lr()
        logs["lr"] = lrs[0]
        if len(lrs) > 1:
            logs["lr_lora"] = lrs[-1]
        return logs

    # ------------------------------------------------------------------ loop
    def train(self, max_steps: int | None = None, on_step: Callable[["Trainer", dict], None] | None = None) -> list[dict]:
        """Train until ``max_steps`` (default ``train.max_steps``); returns the per-step logs of this call.

        ``on_step(trainer, logs)`` runs after every step (tests use it to interrupt a run).
        """
        tc = self.cfg.train
        max_steps = tc.max_steps if max_steps is None else max_steps
        loader = self._loader()
        history = []
        bar = tqdm(total=max_steps, initial=self.step, disable=not self.main, desc="train", dynamic_ncols=True)
        t0 = time.time()
        while self.step < max_steps:
            logs = self.train_step(loader)
            logs["step"] = self.step
            logs["sec_per_step"] = time.time() - t0
            t0 = time.time()
            history.append(logs)
            bar.update(1)
            bar.set_postfix(loss_g=f"{logs['loss_g']:.4f}")
            if self.main and (self.step % tc.log_every == 0 or self.step == max_steps):
                with self.log_file.open("a") as f:
                    f.write(json.dumps(logs) + "\n")
            if tc.val_every > 0 and self.step % tc.val_every == 0:
                self.validate()
            if self.step % tc.checkpoint_every == 0 or self.step == max_steps:
                self.save()
            if on_step is not None:
                on_step(self, logs)
        bar.close()
        return history

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> Path | None:
        """Save a grid (rows: samples; columns: LQ, restored, HQ, first reference) of fixed samples."""
        if not self.main:
            return None
        view = copy.copy(self.dataset)
        view.seed = self.cfg.seed + 1_000_003  # fixed validation degradations, independent of training positions
        view._perm_epoch = -1
        n = min(self.cfg.train.val_samples, len(self.dataset))
        batch = self._to_device(torch.utils.data.default_collate([view[i] for i in range(n)]))
        model = self.acc.unwrap_model(self.forward).model
        if self.ema is not None:
            self.ema.swap(model)
        rng_state = torch.get_rng_state()
        try:
            model.eval()
            with self.acc.autocast():
                restored = self.acc.unwrap_model(self.forward)(batch["lq"], batch["refs"], batch["ref_mask"], batch["hq"])[0]
        finally:
            model.train()
            torch.set_rng_state(rng_state)
            if self.ema is not None:
                self.ema.swap(model)
        rows = []
        for i in range(n):
            ref = batch["refs"][i, 0] if bool(batch["ref_mask"][i, 0]) else torch.full_like(batch["hq"][i], -1)
            rows.append(np.concatenate([_image_row(t) for t in (batch["lq"][i], restored[i], batch["hq"][i], ref)], axis=1))
        path = self.output / "samples" / f"step_{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.concatenate(rows, axis=0)[..., ::-1])
        return path

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Process 0 writes one checkpoint; every process sends it its RNG states and a digest of its weights
        (identical digests: the processes hold the same weights, recorded in ``state.json``)."""
        from accelerate.utils import gather_object

        model = self.acc.unwrap_model(self.forward).model
        tensors = {"generator": ckpt.trainable_state(model), "vre": model.vre.state_dict(),
                   "discriminator": self.acc.unwrap_model(self.disc).state_dict()}
        reports = gather_object([{"rng": ckpt.rng_state(),
                                  "digest": ckpt.tensors_digest(tensors["generator"], tensors["discriminator"])}])
        if not self.main:
            return None
        digests = [r["digest"] for r in reports]
        if len(set(digests)) > 1:
            self.print(f"WARNING: the {len(digests)} processes hold different weights at step {self.step} "
                       f"(digests {digests}); the checkpoint has process 0's")
        if self.ema is not None:
            tensors["ema"] = self.ema.shadow
        objects = {"optimizer_g": self.opt_g.state_dict(), "optimizer_d": self.opt_d.state_dict(),
                   "scheduler_g": self.sched_g.state_dict()}
        state = {"micro_batch": self.step * self.cfg.train.grad_accum, "config": config_to_dict(self.cfg),
                 "model_config": model.config.to_dict(), "num_processes": self.acc.num_processes,
                 "weights_sha256": digests}
        path = ckpt.save_checkpoint(self.output, self.step, tensors, objects, state, keep=self.cfg.train.keep_checkpoints,
                                    rng_states=[r["rng"] for r in reports])
        self.print(f"saved checkpoint {path}")
        return path

    def _load(self, resume: str | Path) -> dict[str, torch.Tensor] | None:
        """Load a checkpoint into the unwrapped modules and optimisers; returns its EMA tensors (or None)."""
        path, state = ckpt.load_checkpoint(resume)
        ckpt.load_trainable(self.model, ckpt.load_tensors(path, "generator"))
        self.model.vre.load_state_dict(ckpt.load_tensors(path, "vre"))
        self.disc.load_state_dict(ckpt.load_tensors(path, "discriminator"))
        self.opt_g.load_state_dict(ckpt.load_object(path, "optimizer_g"))
        self.opt_d.load_state_dict(ckpt.load_object(path, "optimizer_d"))
        self.sched_g.load_state_dict(ckpt.load_object(path, "scheduler_g"))
        ckpt.restore_rng(path, self.acc.process_index)
        self.step = int(state["step"])
        if state["num_processes"] != self.acc.num_processes:
            self.print(f"note: the checkpoint was written by {state['num_processes']} process(es), this run has "
                       f"{self.acc.num_processes}: training continues, but not with the exact data order and noise")
        if self.main:
            self._trim_log()
        self.print(f"resumed from {path} at step {self.step}")
        return ckpt.load_tensors(path, "ema")

    def _trim_log(self) -> None:
        """Drop log lines past the resumed step (a killed run logged steps its last checkpoint does not hold)."""
        if not self.log_file.is_file():
            return
        kept = []
        for line in self.log_file.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line + "\n")
            except (ValueError, KeyError):  # a line cut short by the kill
                continue
        self.log_file.write_text("".join(kept))
