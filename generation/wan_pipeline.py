"""Panoramic video generation: Wan2.1 I2V conditioned on a scaffold video and its masks.

Matrix-3D (FACTS §C) keeps the Wan2.1-I2V-14B architecture and repurposes its 20-channel
image condition ``y``:

* the WHOLE scaffold video (the occlusion-aware mesh rendered along the trajectory), pixels
  scaled to [-1, 1] with unknown pixels set to -1, is VAE-encoded -> 16 x T x h x w
  (T = (F - 1) / 4 + 1, h = H / 8, w = W / 8), normalised with the VAE's latents_mean/std;
* the per-frame masks (1 = known) are resized to h x w (bilinear, as Matrix-3D), frame 0 is
  repeated 4 times (F + 3 = 4T frames) and folded into 4 channels: channel c of latent frame
  t is mask frame 4t + c of the extended sequence -> 4 x T x h x w;
* transformer input = ``[noise 16, mask 4, scaffold latent 16]`` = 36 channels;
* CLIP image tokens come from frame 0 (the input panorama, fully known), squashed to the
  CLIP input size as the original Wan code does (no centre crop, the whole 360° is seen);
* flow matching with shift 5, 50 steps, classifier-free guidance 5, 81 frames,
  480p = 480 x 960 and 720p = 720 x 1440.

PanoVideoPipeline subclasses diffusers' WanImageToVideoPipeline: loading
(``from_pretrained``), prompt encoding, LoRA loading (``load_lora_weights``) and offloading
are diffusers'; this file adds the scaffold conditioning, a denoising loop that reads as
numbered steps, seam-aware decoding (generation.seamless) and an optional widened input
(extra zero-initialised patch-embedding channels, for training experiments).

Tensors: videos ``[B, 3, F, H, W]`` float in [0, 1] (the VAE's [-1, 1] stays inside);
masks ``[B, F, H, W]`` (bool or float, 1 = known); latents ``[B, C, T, h, w]``.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from matrix_world.errors import InputError

RESOLUTIONS = {"480p": (480, 960), "720p": (720, 1440)}
HUB_IDS = {"480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"}
# Matrix-3D's prompt suffix and negative prompt (code/panoramic_image_to_video.py).
PROMPT_SUFFIX = (
    " The video is of high quality, and the view is very clear. High quality, masterpiece, best quality,"
    " highres, ultra-detailed, fantastic."
)
NEGATIVE_PROMPT = "The video is not of a high quality, it has a low resolution. Distortion. strange artifacts."
# transformer/config.json of Wan-AI/Wan2.1-I2V-14B-{480P,720P}-Diffusers (16.4B parameters).
WAN_I2V_14B_CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36, "out_channels": 16,
    "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 1280, "added_kv_proj_dim": 5120, "rope_max_seq_len": 1024,
}
BASE_IN_CHANNELS = 36  # noise 16 + mask 4 + scaffold latent 16
SEAM_MODES = ("wrap", "blend", "none")


@dataclass
class PanoCondition:
    """What the transformer takes besides the noisy latents (:meth:`PanoVideoPipeline.prepare_condition`).

    condition: Tensor  # [B, 20 (+E), T, h, w] mask 4 | normalised scaffold latent 16 (| extra channels)
    image_embeds: Tensor  # [B, tokens, image_dim] CLIP tokens of frame 0
    prompt_embeds: Tensor  # [B, 512, text_dim]
    negative_prompt_embeds: Tensor | None  # [B, 512, text_dim] under classifier-free guidance
    """

    condition: Tensor
    image_embeds: Tensor
    prompt_embeds: Tensor
    negative_prompt_embeds: Tensor | None = None


# --------------------------------------------------------------------------- conditioning (pure functions)


def check_frames_and_size(num_frames: int, height: int, width: int, *, temporal: int = 4, multiple: int = 16) -> None:
    """Raise InputError unless Wan can take this video as it is (no silent rounding)."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        lower = (num_frames - 1) // temporal * temporal + 1
        raise InputError(
            f"Wan needs a frame count of the form {temporal}k+1 (e.g. {max(lower, 1)} or {lower + temporal}); "
            f"got {num_frames} frames (change the trajectory's frame count, frames are not rounded)"
        )
    if height % multiple or width % multiple:
        raise InputError(f"video height and width must be divisible by {multiple}; got {height}x{width} (H x W)")


def scaffold_to_vae_input(scaffold: Tensor, mask: Tensor) -> Tensor:
    """Scaffold video in [0, 1] -> the VAE's [-1, 1] with every unknown pixel at exactly -1.

    scaffold: Tensor  # [B, 3, F, H, W] float in [0, 1]
    mask: Tensor  # [B, F, H, W] bool or float (known where > 0.5)
    returns: Tensor  # [B, 3, F, H, W] float
    """
    known = (mask > 0.5).unsqueeze(1)
    return torch.where(known, scaffold * 2.0 - 1.0, torch.full_like(scaffold, -1.0))


def mask_to_latent_mask(mask: Tensor, latent_height: int, latent_width: int, *, temporal: int = 4) -> Tensor:
    """Per-frame masks -> Wan's 4-channel mask latent (frame 0 repeated ``temporal`` times).

    mask: Tensor  # [B, F, H, W] bool or float in [0, 1], F = temporal * (T - 1) + 1
    returns: Tensor  # [B, temporal, T, h, w] float; [b, c, t] = resized mask of extended frame temporal*t + c
    """
    b, f = mask.shape[:2]
    if (f - 1) % temporal:
        raise InputError(f"mask has {f} frames; Wan needs {temporal}k+1")
    small = F.interpolate(mask.float(), size=(latent_height, latent_width), mode="bilinear", align_corners=False)
    extended = torch.cat([small[:, :1].repeat(1, temporal, 1, 1), small[:, 1:]], dim=1)  # [B, F + temporal - 1, h, w]
    return extended.view(b, -1, temporal, latent_height, latent_width).transpose(1, 2)


def vae_latent_stats(vae, device, dtype) -> tuple[Tensor, Tensor]:
    """(mean, std) of the Wan VAE latents, each [1, z, 1, 1, 1]."""
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, device=device, dtype=dtype).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device, dtype=dtype).view(1, z, 1, 1, 1)
    return mean, std


def widen_patch_embedding(transformer, extra_channels: int):
    """Add ``extra_channels`` zero-initialised input channels to Wan's patch embedding (in place).

    With zero weights on the new channels the model's output is unchanged whatever they hold,
    so training can start from the pretrained model. Done by hand (from_pretrained with
    ignore_mismatched_sizes leaves meta tensors, FACTS §B) and recorded with
    register_to_config so save_pretrained / from_pretrained round-trip the widened model.
    """
    if extra_channels <= 0:
        return transformer
    old = transformer.patch_embedding
    new = torch.nn.Conv3d(
        old.in_channels + extra_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        assert new.bias is not None  # Conv3d(bias=True)
        new.bias.copy_(old.bias)
    transformer.patch_embedding = new
    transformer.register_to_config(in_channels=old.in_channels + extra_channels)
    return transformer


def matrix3d_sigmas(num_inference_steps: int) -> list[float]:
    """Unshifted sigmas 1 -> 0 (exclusive) as DiffSynth's FlowMatchScheduler(extra_one_step=True) uses."""
    return torch.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()


# lightx2v's 4-step distillation of Wan2.1-I2V (configs/distill/wan_i2v_distill_4step_cfg.json):
# denoising_step_list [1000, 750, 500, 250] are INDICES into a 1000-point sigma grid 1 -> 0 that the
# shift (5) has already been applied to (its step_distill scheduler), i.e. the unshifted sigmas
# 1, 0.75, 0.5, 0.25; shifted by 5: 1, 0.9375, 0.8333, 0.625 (timesteps 1000, 937.5, 833.3, 625),
# then an Euler step to sigma 0 — what FlowMatchEulerDiscreteScheduler(shift=5) does with these.
LIGHTX2V_STEP_LIST = (1000, 750, 500, 250)


def lightx2v_sigmas(num_inference_steps: int) -> list[float]:
    """Unshifted sigmas of lightx2v's 4-step distillation (the scheduler applies the shift)."""
    if num_inference_steps != len(LIGHTX2V_STEP_LIST):
        raise InputError(f"the lightx2v sigma schedule has {len(LIGHTX2V_STEP_LIST)} steps (its distillation's), "
                         f"got num_inference_steps={num_inference_steps}")
    return [t / 1000.0 for t in LIGHTX2V_STEP_LIST]


SIGMA_SCHEDULES = {"matrix3d": matrix3d_sigmas, "lightx2v": lightx2v_sigmas}  # "scheduler": the scheduler's own


# --------------------------------------------------------------------------- pipeline


class PanoVideoPipeline(WanImageToVideoPipeline):
    """Wan2.1 I2V + LoRA generating a panoramic video from a scaffold video and masks (Matrix-3D).

    Load like the stock pipeline::

        pipe = PanoVideoPipeline.from_pretrained("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", dtype=torch.bfloat16)
        pipe.use_flow_matching(shift=5.0)

    then ``pipe(prompt, scaffold=..., mask=...)``. See the module docstring for the layout.
    """

    cfg_split: tuple[Any, int] | None = None
    """(process group of 2, this rank's index in it) under CFG across GPUs (:meth:`split_cfg`), else None."""

    def use_flow_matching(self, shift: float = 5.0) -> None:
        """Replace the shipped scheduler by flow-matching Euler with the given shift (Matrix-3D)."""
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)

    def split_cfg(self, group, index: int) -> None:
        """CFG across GPUs: in the guided steps this rank runs only the conditional (``index`` 0) or
        the unconditional (1) pass, and the two predictions are exchanged with ``all_gather`` over
        ``group`` (2 ranks, or the 2 rank groups' matching members under context parallelism)."""
        if index not in (0, 1):
            raise InputError(f"the CFG index must be 0 (conditional) or 1 (unconditional), got {index}")
        self.cfg_split = (group, index)

    # ---- conditioning

    @torch.no_grad()
    def encode_scaffold(self, scaffold: Tensor, mask: Tensor, *, device, dtype=torch.float32) -> Tensor:
        """Masked scaffold video + masks -> the 20-channel condition ``[mask 4, latent 16]``.

        scaffold: Tensor  # [B, 3, F, H, W] in [0, 1]
        mask: Tensor  # [B, F, H, W]
        returns: Tensor  # [B, 20, T, H/8, W/8] on ``device`` in ``dtype``
        """
        s = self.vae_scale_factor_spatial
        h, w = scaffold.shape[-2] // s, scaffold.shape[-1] // s
        vae_device = self._module_device(self.vae, device)
        video = scaffold_to_vae_input(scaffold.to(vae_device, torch.float32), mask.to(vae_device))
        latent = self.encode_latents(video)
        latent_mask = mask_to_latent_mask(mask.to(latent.device), h, w, temporal=self.vae_scale_factor_temporal)
        return torch.cat([latent_mask, latent], dim=1).to(device=device, dtype=dtype)

    @torch.no_grad()
    def encode_latents(self, video: Tensor) -> Tensor:
        """A video in the VAE's range -> normalised Wan-VAE latents (the scaffold condition and the
        training target use this one encoding).

        video: Tensor  # [B, 3, F, H, W] float in [-1, 1], F = 4k + 1
        returns: Tensor  # [B, 16, T, H/8, W/8] float32 on the VAE's device, (mode - latents_mean) / latents_std
        """
        vae_device = self._module_device(self.vae, video.device)
        latent = self.vae.encode(video.to(vae_device, self.vae.dtype)).latent_dist.mode()  # argmax, as the stock pipeline
        mean, std = vae_latent_stats(self.vae, latent.device, torch.float32)
        return (latent.float() - mean) / std

    @torch.no_grad()
    def encode_frame0(self, frame0: Tensor, *, device) -> Tensor:
        """CLIP tokens of the first frame (penultimate hidden states, as Wan).

        frame0: Tensor  # [B, 3, H, W] in [0, 1]; resized (bicubic, no crop) to the CLIP input size
        returns: Tensor  # [B, tokens, image_dim], e.g. [B, 257, 1280] for the 14B model
        """
        size = self.image_encoder.config.image_size
        enc_device = self._module_device(self.image_encoder, device)
        x = F.interpolate(frame0.to(enc_device, torch.float32), size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.image_processor.image_mean, device=enc_device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_processor.image_std, device=enc_device).view(1, 3, 1, 1)
        pixel_values = ((x - mean) / std).to(self.image_encoder.dtype)
        out = self.image_encoder(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[-2].to(device)

    @staticmethod
    def _module_device(module, fallback) -> torch.device:
        from diffusers.utils.torch_utils import get_module_execution_device

        try:
            return get_module_execution_device(module)
        except (AttributeError, StopIteration):
            return torch.device(fallback)

    # ---- decoding

    @torch.no_grad()
    def decode_latents(self, latents: Tensor, *, seam: str = "wrap", seam_pad_cols: int = 2) -> Tensor:
        """Denormalise and decode, seam-aware in longitude.

        latents: Tensor  # [B, 16, T, h, w]
        seam: "wrap" (decode with wrapped latent columns, generation.seamless.wrap_decode),
              "blend" (Argus-style two decodes, blended_decode) or "none"
        returns: Tensor  # [B, 3, F, H, W] float32 in [0, 1]
        """
        from matrix_world.generation.seamless import blended_decode, wrap_decode

        vae_device = self._module_device(self.vae, latents.device)
        mean, std = vae_latent_stats(self.vae, vae_device, torch.float32)
        z = latents.to(vae_device, torch.float32) * std + mean

        def decode_fn(x: Tensor) -> Tensor:
            return self.vae.decode(x.to(self.vae.dtype), return_dict=False)[0].float()

        if seam == "wrap":
            video = wrap_decode(decode_fn, z, pad_cols=seam_pad_cols)
        elif seam == "blend":
            video = blended_decode(decode_fn, z)
        elif seam == "none":
            video = decode_fn(z)
        else:
            raise InputError(f"seam must be one of {SEAM_MODES}, got {seam!r}")
        return ((video + 1.0) * 0.5).clamp(0.0, 1.0)

    # ---- the transformer's condition (inference and training)

    @torch.no_grad()
    def prepare_condition(
        self,
        prompt: str | list[str] | None = None,
        *,
        scaffold: Tensor | None = None,  # [B, 3, F, H, W] in [0, 1]
        mask: Tensor | None = None,  # [B, F, H, W], 1 = known
        negative_prompt: str | list[str] | None = NEGATIVE_PROMPT,
        do_classifier_free_guidance: bool = False,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        image_embeds: Tensor | None = None,  # [B, tokens, image_dim]
        condition: Tensor | None = None,  # [B, 20, T, h, w] precomputed encode_scaffold output
        extra_condition: Tensor | None = None,  # [B, E, T, h, w] for a widened transformer
        max_sequence_length: int = 512,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> PanoCondition:
        """(scaffold rgb, mask, prompt) -> what the transformer takes besides the noisy latents.

        The ONE function that turns the scaffold and its mask into the transformer's extra input
        channels and the text / image embeddings: :meth:`__call__` (inference) and
        :mod:`matrix_world.generation.train_video_lora` (training) both call it, so the model is
        trained on exactly the condition it sees at inference. Precomputed parts are passed through
        (cast to ``dtype``). ``device`` / ``dtype`` default to the execution device and the
        transformer's dtype.
        """
        self._check_call_inputs(scaffold, mask, condition, image_embeds, extra_condition, prompt, prompt_embeds)
        device = self._execution_device if device is None else torch.device(device)
        dtype = self.transformer.dtype if dtype is None else dtype

        # 1. Text embeddings (prompt, negative prompt).
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=device,
        )
        batch = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)

        # 2. CLIP image tokens of frame 0.
        if image_embeds is None:
            assert scaffold is not None  # _check_call_inputs: scaffold or image_embeds
            image_embeds = self.encode_frame0(scaffold[:, :, 0], device=device)
        image_embeds = image_embeds.to(device=device, dtype=dtype)
        if image_embeds.shape[0] != batch:
            image_embeds = image_embeds.repeat(batch // image_embeds.shape[0], 1, 1)

        # 3. Scaffold condition [mask 4, latent 16] (+ extra channels of a widened model).
        if condition is None:
            assert scaffold is not None and mask is not None  # _check_call_inputs: scaffold + mask or condition
            condition = self.encode_scaffold(scaffold, mask, device=device, dtype=torch.float32)
        condition = condition.to(device=device, dtype=torch.float32)
        if condition.shape[0] != batch:
            condition = condition.repeat(batch // condition.shape[0], 1, 1, 1, 1)
        if extra_condition is not None:
            condition = torch.cat([condition, extra_condition.to(device=device, dtype=torch.float32)], dim=1)
        condition = condition.to(dtype)
        return PanoCondition(condition=condition, image_embeds=image_embeds, prompt_embeds=prompt_embeds,
                             negative_prompt_embeds=negative_prompt_embeds)

    # ---- generation

    def _check_call_inputs(self, scaffold, mask, condition, image_embeds, extra_condition, prompt, prompt_embeds):
        if condition is None and (scaffold is None or mask is None):
            raise InputError("give the scaffold video and its mask (or a precomputed condition)")
        if scaffold is not None:
            if scaffold.dim() != 5 or scaffold.shape[1] != 3:
                raise InputError(f"scaffold must be [B, 3, F, H, W], got {tuple(scaffold.shape)}")
            b, _, f, hh, ww = scaffold.shape
            if mask is None or tuple(mask.shape) != (b, f, hh, ww):
                raise InputError(f"mask must be [B, F, H, W] = {(b, f, hh, ww)}, got {None if mask is None else tuple(mask.shape)}")
            check_frames_and_size(f, hh, ww, temporal=self.vae_scale_factor_temporal, multiple=self._size_multiple())
        if image_embeds is None and scaffold is None:
            raise InputError("give the scaffold video (frame 0 feeds CLIP) or precomputed image_embeds")
        if prompt is None and prompt_embeds is None:
            raise InputError("give a prompt or prompt_embeds")
        extra = self.transformer.config.in_channels - BASE_IN_CHANNELS
        if extra > 0 and (extra_condition is None or extra_condition.shape[1] != extra):
            raise InputError(f"this transformer takes {extra} extra input channels: pass extra_condition [B, {extra}, T, h, w]")
        if extra <= 0 and extra_condition is not None:
            raise InputError("extra_condition needs a widened transformer (widen_patch_embedding)")

    def _size_multiple(self) -> int:
        return self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]

    def _predict(self, cache: str, hidden: Tensor, t: Tensor, text: Tensor, image: Tensor,
                 attention_kwargs: dict | None) -> Tensor:
        """One transformer pass (velocity) under a named cache context.

        hidden: [B, 36, f, h, w] (noise | mask | scaffold latent); text: [B, 512, D]; image: [B, 257, D]
        """
        with self.transformer.cache_context(cache):
            return self.transformer(hidden_states=hidden, timestep=t.expand(hidden.shape[0]),
                                    encoder_hidden_states=text, encoder_hidden_states_image=image,
                                    attention_kwargs=attention_kwargs, return_dict=False)[0]

    def _predict_split(self, hidden: Tensor, t: Tensor, text: Tensor, negative: Tensor | None, image: Tensor,
                       attention_kwargs: dict | None) -> tuple[Tensor, Tensor]:
        """(cond, uncond) [B, 16, f, h, w] under CFG across GPUs: this rank's pass, the partner's by all_gather."""
        import torch.distributed as dist

        assert negative is not None and self.cfg_split is not None  # encode_prompt makes it under CFG
        group, index = self.cfg_split
        mine = self._predict("uncond" if index else "cond", hidden, t, negative if index else text, image,
                             attention_kwargs).contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=group)
        return both[0], both[1]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        scaffold: Tensor | None = None,  # [B, 3, F, H, W] in [0, 1]
        mask: Tensor | None = None,  # [B, F, H, W], 1 = known
        negative_prompt: str | list[str] | None = NEGATIVE_PROMPT,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,  # [B, 16, T, h, w] initial noise
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        image_embeds: Tensor | None = None,  # [B, tokens, image_dim]
        condition: Tensor | None = None,  # [B, 20, T, h, w] precomputed encode_scaffold output
        extra_condition: Tensor | None = None,  # [B, E, T, h, w] for a widened transformer
        cfg_batch: bool = False,
        seam: str = "wrap",
        seam_pad_cols: int = 2,
        late_roll_fraction: float = 0.0,
        sigma_schedule: str = "matrix3d",
        cfg_stop: float = 1.0,
        output_type: str = "pt",
        callback_on_step_end: Callable[[Any, int, Tensor, dict], dict] | None = None,
        attention_kwargs: dict | None = None,
        max_sequence_length: int = 512,
    ) -> WanPipelineOutput:
        """Generate a panoramic video that follows the scaffold.

        Returns WanPipelineOutput(frames=...) with frames ``[B, 3, F, H, W]`` float32 in [0, 1]
        (output_type "pt"), ``[B, F, H, W, 3]`` numpy (output_type "np") or the final latents
        ``[B, 16, T, h, w]`` (output_type "latent").
        cfg_batch: run the conditional and unconditional passes as one batch of 2 (fewer
        kernel launches and one pass over offloaded weights; more activation memory).
        late_roll_fraction: roll the transformer input circularly by a random number of
        columns in this last fraction of the steps (generation.seamless.late_step_rolls).
        sigma_schedule: "matrix3d" (sigmas linspace(1, 0, N + 1)[:-1], shifted, as DiffSynth;
        needs a flow-matching Euler scheduler), "lightx2v" (the 4-step distillation's sigmas, see
        :data:`LIGHTX2V_STEP_LIST`) or "scheduler" (the scheduler's own ``set_timesteps(N)``, as
        the stock diffusers pipeline).
        cfg_stop: classifier-free guidance in the first ``ceil(cfg_stop * N)`` steps only, the
        conditional pass alone after them (1.0 = every step; an approximation below 1).
        """
        from matrix_world.generation.seamless import late_step_rolls

        # 1. Check inputs (frame count 4k+1 and size multiple of 16: no silent rounding).
        self._check_call_inputs(scaffold, mask, condition, image_embeds, extra_condition, prompt, prompt_embeds)
        device = self._execution_device
        dtype = self.transformer.dtype
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        do_cfg = guidance_scale > 1.0

        # 2-4. Text embeddings, CLIP tokens of frame 0, the scaffold condition (the one function training calls too).
        prepared = self.prepare_condition(
            prompt, scaffold=scaffold, mask=mask, negative_prompt=negative_prompt, do_classifier_free_guidance=do_cfg,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, image_embeds=image_embeds,
            condition=condition, extra_condition=extra_condition, max_sequence_length=max_sequence_length,
            device=device, dtype=dtype,
        )
        prompt_embeds, negative_prompt_embeds = prepared.prompt_embeds, prepared.negative_prompt_embeds
        image_embeds, condition = prepared.image_embeds, prepared.condition
        batch = prompt_embeds.shape[0]
        _, _, num_latent_frames, h, w = condition.shape

        # 5. Timesteps: flow matching, shifted by the scheduler (Matrix-3D's or lightx2v's sigma grid for Euler).
        if sigma_schedule not in (*SIGMA_SCHEDULES, "scheduler"):
            raise InputError(f"sigma_schedule must be one of {', '.join(SIGMA_SCHEDULES)}, scheduler; got {sigma_schedule!r}")
        if sigma_schedule in SIGMA_SCHEDULES and isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            self.scheduler.set_timesteps(sigmas=SIGMA_SCHEDULES[sigma_schedule](num_inference_steps), device=device)
        elif sigma_schedule == "lightx2v":
            raise InputError("the lightx2v sigma schedule needs the flow-matching Euler scheduler (use_flow_matching)")
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        if not 0.0 <= cfg_stop <= 1.0:
            raise InputError(f"cfg_stop must be in [0, 1], got {cfg_stop}")
        guided_steps = math.ceil(cfg_stop * len(timesteps)) if do_cfg else 0

        # 6. Initial noise.
        shape = (batch, self.vae.config.z_dim, num_latent_frames, h, w)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents must be {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=torch.float32)

        # 7. Denoising loop (optionally with circular rolls in the late steps).
        if do_cfg and cfg_batch:
            assert negative_prompt_embeds is not None  # encode_prompt makes it under CFG
            text = torch.cat([prompt_embeds, negative_prompt_embeds])
        else:
            text = prompt_embeds
        if do_cfg and cfg_batch and self.cfg_split is not None:
            raise InputError("cfg_batch and CFG across GPUs (split_cfg) exclude each other; use one of them")
        seed = 0 if generator is None else generator.initial_seed() + 1
        roll_gen = torch.Generator().manual_seed(seed)  # CPU generator for the roll shifts
        rolls = late_step_rolls(
            self.transformer, num_steps=len(timesteps), late_fraction=late_roll_fraction, width=w, generator=roll_gen
        )
        with rolls, self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                self._current_timestep = t
                model_input = torch.cat([latents.to(dtype), condition], dim=1)
                if i < guided_steps and self.cfg_split is not None:  # one pass here, the other on the partner rank
                    cond, uncond = self._predict_split(model_input, t, prompt_embeds, negative_prompt_embeds, image_embeds,
                                                       attention_kwargs)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                elif i < guided_steps and cfg_batch:  # both guidance passes in one batch
                    both = self._predict("cond_uncond", torch.cat([model_input, model_input]), t, text,
                                         torch.cat([image_embeds, image_embeds]), attention_kwargs)
                    cond, uncond = both.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                else:
                    noise_pred = self._predict("cond", model_input, t, prompt_embeds, image_embeds, attention_kwargs)
                    if i < guided_steps:
                        uncond = self._predict("uncond", model_input, t, negative_prompt_embeds, image_embeds,
                                               attention_kwargs)
                        noise_pred = uncond + guidance_scale * (noise_pred - uncond)
                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = out.pop("latents", latents) if out else latents
                progress_bar.update()
        self._current_timestep = None

        # 8. Seam-aware decoding.
        if output_type == "latent":
            frames = latents
        else:
            frames = self.decode_latents(latents, seam=seam, seam_pad_cols=seam_pad_cols)
            if output_type == "np":
                frames = frames.permute(0, 2, 3, 4, 1).cpu().numpy()
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=frames)
