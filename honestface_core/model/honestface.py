"""HonestFaceModel: VRE + reference embedders + fusion -> prompt p; one-step SD-2.1 UNet (LoRA) -> restored face.

Images are ``(B, 3, 512, 512)`` tensors in [-1, 1] (FFHQ-aligned crops). References are FFHQ-aligned crops of
the same person, given per sample (any K >= 1, or none for blind mode), or a reference set encoded once by
:meth:`HonestFaceModel.encode_references` (cached on the set). Frozen, as in the paper: VAE, VRE encoder and LQ
codebook, face backbone, base UNet weights. Trainable: UNet LoRA, VRE projector, identity encoder, feature extractor
(resampler), fusion and the null tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from honestface_core.errors import HonestFaceError
from honestface_core.model import lora as lora_utils
from honestface_core.model.config import HonestFaceConfig
from honestface_core.model.embedders import FaceBackboneLike, FeatureExtractor, IdentityEncoder
from honestface_core.model.fusion import FeatureFusion
from honestface_core.model.generator import OneStepGenerator
from honestface_core.model.reference_batch import (EncodedReferences, ReferenceBatch, ReferenceSource, crops_to_model,
                                                   model_resolution)
from honestface_core.model.vre import TokenProjector, VisualRepresentationEmbedder


RefsInput = ReferenceBatch | Sequence[torch.Tensor | None] | tuple[torch.Tensor, torch.Tensor] | None


class HonestFaceModel(nn.Module):
    """The HonestFace restorer (``variant="osdface"``: OSDFace's blind model, prompt = p_L only).

    Args:
        config: model config.
        unet, vae: loaded SD-2.1-base models (random weights from the config when omitted).
        backbone: frozen face backbone (``iresnet.FaceBackbone``); needed only when references are given.
    """

    def __init__(self, config: HonestFaceConfig, unet: UNet2DConditionModel | None = None,
                 vae: AutoencoderKL | None = None, backbone: FaceBackboneLike | None = None):
        super().__init__()
        self.config = config
        self.vre = VisualRepresentationEmbedder(config.vre)
        self.projector = TokenProjector(config.vre.codebook_dim, config.vre.projector_hidden, config.prompt_dim)
        if config.variant == "honestface":
            self.identity_encoder = IdentityEncoder(config.identity, config.prompt_dim)
            self.feature_extractor = FeatureExtractor(config.features, config.prompt_dim)
            self.fusion = FeatureFusion(config.fusion, config.prompt_dim)
        self.generator = OneStepGenerator(config.generator, unet, vae)
        cross = self.generator.unet.config.cross_attention_dim
        if cross != config.prompt_dim:
            raise HonestFaceError("base UNet", f"has cross-attention width {cross}, the model's prompt is {config.prompt_dim} wide",
                                  "Use the SD-2.1-base UNet (cross-attention 1024) this model was trained on")
        self.backbone = None
        if backbone is not None:
            self.set_backbone(backbone)
        self.lora_merged = False
        self.freeze_base()

    # ------------------------------------------------------------------------------------------ setup
    def set_backbone(self, backbone: FaceBackboneLike) -> None:
        """Attach the frozen face backbone (checks its feature width against the config)."""
        want = self.config.features.backbone_channels
        if getattr(backbone, "feature_channels", want) != want:
            raise HonestFaceError("face backbone", f"gives {backbone.feature_channels}-channel features, the model expects {want}",
                                  f"Load the recogniser this model was trained with ({self.config.features.backbone})")
        self.backbone = backbone
        backbone.requires_grad_(False)

    def add_lora(self) -> None:
        """Inject fresh trainable LoRA layers (rank/alpha/targets from the config) into the UNet."""
        cfg = self.config.lora
        lora_utils.inject_lora(self.generator.unet, cfg.rank, cfg.alpha, cfg.target_modules)
        self.freeze_base()

    def freeze_base(self) -> None:
        """Freeze VAE, VRE encoder + codebook, backbone and base UNet weights; everything else trains."""
        for p in self.parameters():
            p.requires_grad_(True)
        for module in (self.generator.vae, self.vre, self.backbone):
            if module is not None:
                module.requires_grad_(False)
        for name, p in self.generator.unet.named_parameters():
            p.requires_grad_(".lora_A." in name or ".lora_B." in name)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> "HonestFaceModel":
        """Frozen parts stay in eval mode."""
        super().train(mode)
        for module in (self.generator.vae, self.vre, self.backbone):
            if module is not None:
                module.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.projector.conv1.weight.device

    # ------------------------------------------------------------------------------------------ references
    def check_references(self, refs: ReferenceSource) -> None:
        """Fail early, naming the problem, when ``refs`` cannot condition this model."""
        want = int(self.config.identity.embedding_dim)
        got = int(refs.embeddings.shape[1])
        if got != want:
            raise HonestFaceError(
                "reference set",
                f"has {got}-d embeddings (made by '{refs.encoder_name}'), the HonestFace model expects {want}-d ArcFace "
                f"embeddings ({self.config.features.backbone})",
                "Prepare the references with the insightface (ArcFace) loader or the HonestFace model itself, not with "
                "the OpenCV SFace encoder",
            )
        if self.backbone is None:
            raise HonestFaceError("HonestFace model", "has no face backbone, which reference-based restoration needs",
                                  f"Put the insightface recogniser '{self.config.features.backbone}.onnx' in place and "
                                  "reload the model, or restore without references (blind)")

    def encode_references(self, refs: ReferenceSource) -> EncodedReferences:
        """What the UNet batch needs of a reference set (:class:`EncodedReferences`; stack per-face ones with
        :meth:`ReferenceBatch.from_encoded`). Computed once per set, backbone, device and dtype, and cached on the
        set itself (``refs.cached``; docs/model.md).

        Embeddings made by the same ArcFace network as the model's backbone (``encoder_name``
        ``arcface:<backbone>``) are used as given; others of the right size are recomputed with the backbone (our
        choice: two ArcFace networks' embedding spaces are not interchangeable).
        """
        self.check_references(refs)
        key = (str(self.device), self.dtype, self.config.features.backbone, model_resolution(self))
        return refs.cached(self.backbone, key, lambda: self._encode_references(refs))

    def _encode_references(self, refs: ReferenceSource) -> EncodedReferences:
        with torch.inference_mode():
            images = crops_to_model(refs.crops, self)
            if refs.encoder_name == f"arcface:{self.config.features.backbone}":
                emb = refs.embeddings.to(self.device, torch.float32)
            else:
                emb = self.backbone.embed(images).float()
            return EncodedReferences(F.normalize(emb, dim=-1), self.backbone.features(images))

    # ------------------------------------------------------------------------------------------ prompt
    def _references(self, refs: RefsInput, batch: int) -> ReferenceBatch:
        if refs is None:
            return ReferenceBatch(None, torch.zeros(batch, 0, dtype=torch.bool, device=self.device))
        if isinstance(refs, ReferenceBatch):
            batch_refs = refs
        elif isinstance(refs, tuple) and len(refs) == 2 and torch.is_tensor(refs[0]) and refs[0].ndim == 5:
            batch_refs = ReferenceBatch(refs[0], refs[1].bool())
        else:
            batch_refs = ReferenceBatch.from_list(list(refs))
        if batch_refs.mask.shape[0] != batch:
            raise HonestFaceError("references", f"are given for {batch_refs.mask.shape[0]} faces but {batch} faces are restored",
                                  "Give one (possibly empty) reference list per face")
        return batch_refs

    def prompt_lq(self, lq: torch.Tensor) -> torch.Tensor:
        """p_L (B, 77, prompt_dim) from the LQ image in [-1, 1] (``vre.input_norm`` says what the VRE sees)."""
        norm = self.config.vre.input_norm
        if norm == "double" or (norm == "auto" and self.config.variant == "osdface"):
            lq = (lq - 0.5) / 0.5  # OSDFace's double normalisation of an image already in [-1, 1]
        with torch.no_grad():
            codes, _ = self.vre(lq.to(self.dtype))
        return self.projector(codes)

    def encode_prompt(self, lq: torch.Tensor, refs: RefsInput = None, p_lq: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt tokens p (B, T, prompt_dim): T = 77 + N_F + N_I (77 for ``variant="osdface"``, and for a batch
        without references when ``fusion.absent_tokens="masked"``).

        Args:
            lq: (B, 3, 512, 512) LQ crops in [-1, 1].
            refs: None (blind), a list of per-sample (K_i, 3, S, S) tensors (None / empty = blind sample),
                a padded ``((B, K, 3, S, S), (B, K) mask)`` tuple or a :class:`ReferenceBatch`.
            p_lq: ``prompt_lq(lq)`` when already computed (e.g. to time the other branches alone).

        Raises HonestFaceError for a batch that mixes faces with and without references under masked absent
        tokens: that prompt needs its token mask, see :meth:`encode_prompt_masked`.
        """
        prompt, keep = self.encode_prompt_masked(lq, refs, p_lq)
        if keep is not None:
            raise HonestFaceError("references", "mix faces with and without references, and this model leaves the "
                                  "identity tokens of faces without references out (fusion.absent_tokens='masked')",
                                  "Use encode_prompt_masked() and pass its mask to restore_latent(), or call the model")
        return prompt

    def encode_prompt_masked(self, lq: torch.Tensor, refs: RefsInput = None,
                             p_lq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(p, keep)``: the prompt as :meth:`encode_prompt` (same arguments) and a (B, T) bool token mask for the
        UNet's cross-attention (False = token left out), or None when every token counts."""
        _check_image(lq, "lq")
        p_lq = self.prompt_lq(lq) if p_lq is None else p_lq
        if self.config.variant == "osdface":
            return p_lq, None
        b = lq.shape[0]
        batch_refs = self._references(refs, b)
        mask = batch_refs.mask.to(lq.device)
        present = mask.any(dim=1)
        masked = self.config.fusion.absent_tokens == "masked"
        if not present.any():
            if masked:
                return self.fusion(p_lq), None
            p_id = self.identity_encoder.null_tokens.expand(b, -1, -1).to(p_lq.dtype)
            p_feat = self.feature_extractor.null_tokens.expand(b, -1, -1).to(p_lq.dtype)
            return self.fusion(p_lq, p_id, p_feat), None
        p_id, p_feat = self._reference_tokens(lq, batch_refs, mask)
        keep = None
        if masked and not present.all():
            n_ref = p_id.shape[1] + p_feat.shape[1]
            keep = torch.cat([present.new_ones(b, p_lq.shape[1]), present[:, None].expand(b, n_ref)], dim=1)
        return self.fusion(p_lq, p_id, p_feat, keep), keep

    def _reference_tokens(self, lq: torch.Tensor, batch_refs: ReferenceBatch,
                          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p_F and p_I (null tokens in the rows without references)."""
        if self.backbone is None:
            raise HonestFaceError("references", "were given but no face backbone (ArcFace IResNet) is loaded",
                                  f"Load the model with the insightface recogniser '{self.config.features.backbone}.onnx'")
        b, k = mask.shape
        images, emb, ref_feat = batch_refs.images, batch_refs.embeddings, batch_refs.features
        if images is None and (emb is None or ref_feat is None):
            raise HonestFaceError("references", "have a mask but neither images nor precomputed embeddings and features",
                                  "Pass reference crops")
        with torch.no_grad():
            lq_feat = self.backbone.features(lq)
            if images is not None:
                _check_image(images.flatten(0, 1), "references")
                flat = images.flatten(0, 1).to(lq.device)
                if ref_feat is None:
                    ref_feat = self.backbone.features(flat).unflatten(0, (b, k))
                if emb is None:
                    emb = self.backbone.embed(flat).unflatten(0, (b, k))
        p_id = self.identity_encoder(emb.to(device=lq.device, dtype=self.dtype), mask)
        p_feat = self.feature_extractor(lq_feat.to(self.dtype), ref_feat.to(device=lq.device, dtype=self.dtype), mask)
        return p_id, p_feat

    # ------------------------------------------------------------------------------------------ restore
    def restore_latent(self, z_lq: torch.Tensor, prompt: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled LQ latent (B, 4, h, w) + prompt (+ the token mask of :meth:`encode_prompt_masked`) -> restored
        scaled latent (one UNet call at t = 399)."""
        return self.generator.denoise(z_lq, prompt, keep)

    def forward(self, lq: torch.Tensor, refs: RefsInput = None, clamp: bool = True) -> torch.Tensor:
        """Restore ``lq`` (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in [-1, 1], in ``lq``'s dtype (the VAE may run in
        fp32 inside an fp16 model, see :class:`~.generator.OneStepGenerator`)."""
        prompt, keep = self.encode_prompt_masked(lq, refs)
        with torch.no_grad():
            z_lq = self.generator.encode(lq)
        return self.generator.decode(self.restore_latent(z_lq, prompt, keep), clamp=clamp).to(lq.dtype)


def _check_image(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise HonestFaceError(name, f"must be a (B, 3, H, W) tensor in [-1, 1], got {shape}",
                              "Convert ComfyUI images with tensor.permute(0, 3, 1, 2) * 2 - 1")
    if x.shape[-1] % 8 or x.shape[-2] % 8:
        raise HonestFaceError(name, f"has size {tuple(x.shape[-2:])}, not a multiple of 8", "Use 512x512 aligned crops")


__all__ = ["EncodedReferences", "HonestFaceModel", "ReferenceBatch"]
