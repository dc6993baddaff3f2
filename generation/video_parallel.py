"""One video on several GPUs: diffusers' context parallelism (Ulysses / ring) and CFG across GPUs.

Every rank of a ``torch.distributed`` launch (one process per GPU) holds the whole Wan pipeline
and runs the same call with the same CPU-seeded noise. Inside the transformer the video tokens
are split across the ranks of a context-parallel group and gathered at its output
(diffusers 0.42.1 ``enable_parallelism`` with a ``ContextParallelConfig``), so every rank ends
with the same latents and frames (one GPU's up to floating-point reordering).

* :func:`context_parallel_config` is the one rule of the split (Ulysses, Ulysses-anything or
  ring), with its reason (printed and stored in the manifest).
* :func:`parallel_layout` splits the ranks into CFG groups: with ``cfg_parallel``, an even
  number of ranks and guidance > 1, the first half runs the conditional pass and the second
  half the unconditional one (:meth:`PanoVideoPipeline.split_cfg`), each half context-parallel.
* :func:`check_parallel_speed` refuses the speed options that cannot work under context
  parallelism; :func:`load_parallel_pipeline` loads the pipeline with the speed options and the
  parallelism applied in the one working order (FP8, attention backend, ``enable_parallelism``,
  cache hooks, compiled blocks: generation.wan_speed.apply_speed).

Which attention backends of diffusers 0.42.1 support context parallelism
(``_AttentionBackendRegistry._supports_context_parallel``): ``native``, ``_native_cudnn``,
``flash``, ``sage`` (and hub / NPU variants), not ``_flash_3`` (our ``flash3``). Ring attention
merges partial results with their log-sum-exp, which ``native`` (torch SDPA) does not return:
ring needs ``cudnn``, ``flash`` or ``sage``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from matrix_world.errors import InputError

CP_ATTENTION = ("native", "cudnn", "flash", "sage")  # our --video-attention names whose backend supports CP
RING_ATTENTION = ("cudnn", "flash", "sage")  # their forward ops return the log-sum-exp that ring attention merges
CP_MODES = ("auto", "ulysses", "ulysses_anything", "ring")


@dataclass(frozen=True)
class ContextParallelChoice:
    """How the tokens of one transformer call are split over ``degree`` ranks, and why."""

    degree: int  # ranks of one context-parallel group (1: no split)
    kind: str  # none | ulysses | ulysses_anything | ring | ring_anything
    reason: str

    def diffusers_config(self, mesh=None):
        """diffusers' ``ContextParallelConfig`` of this choice (``mesh``: a ("cfg", "ring", "ulysses") DeviceMesh or None)."""
        from diffusers.models._modeling_parallel import ContextParallelConfig

        if self.kind.startswith("ring"):
            return ContextParallelConfig(ring_degree=self.degree, ring_anything=self.kind == "ring_anything", mesh=mesh)
        return ContextParallelConfig(ulysses_degree=self.degree, ulysses_anything=self.kind == "ulysses_anything", mesh=mesh)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def context_parallel_config(degree: int, *, num_tokens: int, num_heads: int, attention: str = "native",
                            mode: str = "auto") -> ContextParallelChoice:
    """The one rule of the split of ``num_tokens`` video tokens over ``degree`` ranks.

    auto: Ulysses (all-to-all over heads: each rank attends over all tokens for num_heads / degree
    heads) when the head count divides by the degree, Ulysses-anything when the tokens do not
    (720p: 21 x 45 x 90 = 85,050 tokens on 4 GPUs); when the heads do not divide (Wan 14B's 40
    heads on 3, 6 or 7 GPUs): ring attention (ring-anything for uneven tokens) where the attention
    backend returns the log-sum-exp, else Ulysses-anything (uneven heads). ``mode`` forces one kind.
    """
    if mode not in CP_MODES:
        raise InputError(f"the context-parallel mode must be one of {', '.join(CP_MODES)}, got {mode!r}")
    if degree < 1:
        raise InputError(f"the context-parallel degree must be at least 1, got {degree}")
    if degree == 1:
        return ContextParallelChoice(1, "none", "one rank per transformer call: no context parallelism")
    heads_ok, tokens_ok = num_heads % degree == 0, num_tokens % degree == 0
    tokens = f"{num_tokens:,} tokens {'divide' if tokens_ok else 'do not divide'} by {degree}"
    if mode == "ring" and attention not in RING_ATTENTION:
        raise InputError(f"ring attention needs the log-sum-exp of a cudnn, flash or sage attention backend, not "
                         f"{attention}; use --video-attention cudnn (or the Ulysses modes)")
    if mode == "ulysses" and not (heads_ok and tokens_ok):
        raise InputError(f"plain Ulysses needs the heads ({num_heads}) and tokens ({num_tokens:,}) to divide by {degree}; "
                         "use ulysses_anything or auto")
    if mode == "ring" or (mode == "auto" and not heads_ok and attention in RING_ATTENTION):
        kind = "ring" if tokens_ok else "ring_anything"
        why = "requested" if mode == "ring" else f"{num_heads} heads do not divide by {degree}"
        return ContextParallelChoice(degree, kind, f"{kind.replace('_', '-')} attention over {degree} ranks ({why}; {tokens})")
    if mode == "ulysses_anything" or not (heads_ok and tokens_ok):
        if mode == "ulysses_anything":
            why = "requested"
        elif not heads_ok:
            why = f"{num_heads} heads do not divide by {degree} and {attention} attention returns no log-sum-exp for ring"
        else:
            why = f"{num_heads} heads divide by {degree}, {tokens}: uneven token shards"
        return ContextParallelChoice(degree, "ulysses_anything", f"Ulysses-anything over {degree} ranks ({why})")
    return ContextParallelChoice(degree, "ulysses", f"Ulysses over {degree} ranks ({num_heads} heads and {tokens})")


def video_tokens(frames: int, height: int, width: int, patch: tuple[int, int, int] = (1, 2, 2), *,
                 temporal: int = 4, spatial: int = 8) -> int:
    """Transformer tokens of one call: latent frames (F - 1) / 4 + 1 and the latent grid, per patch."""
    return ((frames - 1) // temporal + 1) // patch[0] * (height // spatial // patch[1]) * (width // spatial // patch[2])


@dataclass(frozen=True)
class ParallelLayout:
    """The ranks of one launch split into CFG groups, each one context-parallel group."""

    world_size: int
    cfg_groups: int  # 1, or 2 under CFG across GPUs (group 0: conditional pass, group 1: unconditional)
    reason: str

    @property
    def degree(self) -> int:
        return self.world_size // self.cfg_groups

    def group_of(self, rank: int) -> int:
        return rank // self.degree


def parallel_layout(world_size: int, *, cfg_parallel: bool, guidance_scale: float) -> ParallelLayout:
    """CFG across GPUs when asked for and possible (even rank count, guidance > 1); a one-line InputError
    when asked for and impossible."""
    if not cfg_parallel:
        return ParallelLayout(world_size, 1, "CFG passes run one after the other on every rank")
    if world_size < 2 or world_size % 2:
        raise InputError(f"--cfg-parallel splits the ranks into two halves; expected an even --gpus, got {world_size}")
    if guidance_scale <= 1.0:
        raise InputError(f"--cfg-parallel needs classifier-free guidance (guidance > 1), got guidance {guidance_scale} "
                         "(the turbo preset has none); drop --cfg-parallel")
    return ParallelLayout(world_size, 2, f"CFG across GPUs: ranks 0-{world_size // 2 - 1} conditional, "
                                         f"{world_size // 2}-{world_size - 1} unconditional")


def check_parallel_speed(attention: str, cache: str, degree: int) -> None:
    """One-line InputErrors for speed options that cannot run under context parallelism (``degree`` > 1)."""
    if degree <= 1:
        return
    if attention not in ("auto", *CP_ATTENTION):
        raise InputError(f"--video-attention {attention} has no context-parallel support in diffusers 0.42.1; with "
                         f"several GPUs use one of {', '.join(('auto', *CP_ATTENTION))}")
    if cache == "fbc":
        raise InputError("--video-cache fbc decides from each rank's share of the tokens, so the ranks can disagree and "
                         "wait on each other forever; with several GPUs use --video-cache off or taylorseer")


@contextlib.contextmanager
def _cpu_accelerator():
    """gloo on CPU (the test path): diffusers' enable_parallelism picks ``rank % torch.accelerator.device_count()``,
    0 on a machine without accelerators; count the CPU as one device while it runs."""
    real = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = real


def device_mesh(device: torch.device, layout: ParallelLayout, choice: ContextParallelChoice):
    """The ("cfg", "ring", "ulysses") DeviceMesh of all ranks (row-major: CFG group, then its ranks)."""
    from torch.distributed.device_mesh import init_device_mesh

    ring = choice.degree if choice.kind.startswith("ring") else 1
    return init_device_mesh(device.type, (layout.cfg_groups, ring, layout.degree // ring),
                            mesh_dim_names=("cfg", "ring", "ulysses"))


def load_parallel_pipeline(config, device, *, num_frames: int, layout: ParallelLayout, mode: str = "auto",
                           load=None) -> tuple[Any, dict]:
    """The Wan pipeline on this rank with the speed options and the parallelism of ``layout`` applied
    (every rank calls it; torch.distributed initialised). Returns (pipe, info); info["parallel"] holds
    the layout and the context-parallel choice with its reason.

    config: a VideoConfig (memory mode full: every rank holds the whole model); load: the loader
    (default :func:`matrix_world.generation.video.load_video_pipeline`; benchmarks pass one that builds
    random weights) called as ``load(config, device, num_frames=..., parallelize=...)``."""
    import torch.distributed as dist
    from matrix_world.generation.video import load_video_pipeline

    device = torch.device(device)
    check_parallel_speed(config.attention, config.cache, layout.degree)
    if config.representation == "viewpoint":
        side = config.map_size()
        height, width = side, side
    else:
        height = config.working_height()
        width = 2 * height
    frames = int(config.window) if config.window is not None and num_frames > config.window else num_frames
    rank = dist.get_rank()
    found: dict = {}

    def parallelize(transformer, plan) -> dict:
        check_parallel_speed(plan.attention, plan.cache, layout.degree)  # the auto choices too
        tokens = video_tokens(frames, height, width, tuple(transformer.config.patch_size))
        choice = context_parallel_config(layout.degree, num_tokens=tokens, num_heads=transformer.config.num_attention_heads,
                                         attention=plan.attention, mode=mode)
        mesh = device_mesh(device, layout, choice) if layout.world_size > 1 else None
        if choice.degree > 1:
            with _cpu_accelerator() if device.type == "cpu" else contextlib.nullcontext():
                transformer.enable_parallelism(config=choice.diffusers_config(mesh))
        found["mesh"] = mesh
        info = {"world_size": layout.world_size, "cfg_groups": layout.cfg_groups, "cfg_reason": layout.reason,
                "tokens": tokens, "tokens_per_rank": -(-tokens // choice.degree), **choice.to_dict()}

        def measure(module, args):  # what this rank's first self-attention sees, once
            info["tokens_seen"] = int(args[0].shape[1])
            handle.remove()

        handle = transformer.blocks[0].attn1.register_forward_pre_hook(measure)
        return info

    pipe, info = (load or load_video_pipeline)(dataclasses.replace(config, memory="full"), device, num_frames=num_frames,
                                               parallelize=parallelize)
    if layout.cfg_groups == 2:
        pipe.split_cfg(found["mesh"]["cfg"].get_group(), layout.group_of(rank))
    info["parallel"] = info.get("speed", {}).pop("parallel", None)
    return pipe, info


def init_distributed(backend: str, *, timeout_s: float = 3600.0) -> torch.device:
    """``torch.distributed.init_process_group`` from torchrun's environment (once) -> this rank's device
    (``cuda:LOCAL_RANK`` under nccl, the CPU under gloo)."""
    import datetime

    import torch.distributed as dist

    if backend not in ("nccl", "gloo"):
        raise InputError(f"the distributed backend must be nccl (GPUs) or gloo (CPU), got {backend!r}")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def generate_video_distributed(config, *, scaffold_rgb, scaffold_mask, prompt: str, c2w, seed: int = 0,
                               dist_backend: str = "nccl", mode: str = "auto", cfg_parallel: bool = False):
    """One video's denoising spread over all processes of a ``torchrun`` launch (one per GPU).

    Every rank loads the whole pipeline (:func:`load_parallel_pipeline`) and runs the same call with
    the same CPU-seeded noise; returns the VideoResult on every rank (write it from rank 0 only),
    its info["parallel"] saying how the ranks were used and why.
    """
    import torch.distributed as dist
    from matrix_world.generation.video import generate_video
    from matrix_world.generation.wan_pipeline import check_frames_and_size

    device = init_distributed(dist_backend)
    cfg = dataclasses.replace(config, backend="wan", memory="full")
    height, frames = cfg.working_height(), len(scaffold_rgb)
    check_frames_and_size(frames, height, 2 * height)
    layout = parallel_layout(dist.get_world_size(), cfg_parallel=cfg_parallel, guidance_scale=cfg.guidance_scale)
    pipe, info = load_parallel_pipeline(cfg, device, num_frames=frames, layout=layout, mode=mode)
    result = generate_video(cfg, scaffold_rgb=scaffold_rgb, scaffold_mask=scaffold_mask, prompt=prompt, c2w=c2w,
                            device=device, generator=torch.Generator().manual_seed(seed), pipeline=pipe)
    result.info.update(info)
    return result
