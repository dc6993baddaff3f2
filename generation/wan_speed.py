"""Speed options of the Wan video stage: attention kernel, regional compilation, FP8 linears,
diffusers' cache hooks (and, in :class:`~matrix_world.generation.wan_pipeline.PanoVideoPipeline`,
CFG batching and CFG truncation).

:func:`plan_speed` is the one ``auto`` rule: it turns the requested options into a
:class:`SpeedPlan` with a reason for every choice (printed and written to the manifest);
:func:`apply_speed` applies a plan to a loaded pipeline. What each option does:

* ``attention``: diffusers' attention dispatcher (``transformer.set_attention_backend``):
  ``native`` (torch SDPA, it picks its kernel), ``cudnn`` (SDPA's cuDNN kernel: 102 ms vs FA2's
  160 ms per 480p panorama call on an H200, FACTS A2), ``flash`` (flash-attn 2), ``flash3``
  (flash-attn 3, Hopper), ``sage`` (SageAttention >= 2.1.1: INT8 QK / FP8 PV, 1.4x cuDNN on
  an H200, an approximation: 3.9 % relative error on random inputs; a whole 480p CFG step 7.27 s vs
  stock's 8.20, 6.10 s with compiled blocks, through :func:`install_sage_op`). ``auto``: cuDNN on a GPU of
  compute capability >= 9.0, else native; with ``approximate`` (the fast / turbo presets) Sage
  where it is installed.
* ``compile``: ``blocks`` = ``transformer.compile_repeated_blocks(fullgraph=True)`` (one compiled
  graph for the 40 identical blocks). It costs a compile on the first call, so ``auto`` turns it on
  only on CUDA and for at least :data:`COMPILE_MIN_PASSES` transformer passes (a 50-step video with
  CFG is 100 passes; the 4-step turbo video is 4). Measured on an H200 (benchmarks/RESULTS.md,
  2026-12-02): the compile adds ~13 s to the first step and saves 0.61 s per pass (8.40 -> 7.17 s
  per CFG step at 480p), so it repays itself after ~21 passes.
* ``fp8``: ``rowwise`` = torchao's ``Float8DynamicActivationFloat8WeightConfig(PerRow())`` on the
  Linear layers of the transformer blocks (an approximation: 4.1 % output relative error on random
  weights). Needs a GPU of compute capability >= 8.9, torchao, and the weights on the GPU (memory
  mode ``full``); LoRAs are fused before it. With compiled blocks it takes a 480p CFG step from
  7.17 to 6.06 s and the peak memory from 35.7 to 19.9 GB, but its first call costs ~186 s of
  quantisation and recompilation (H200), repaid only after ~300 passes: ``auto`` leaves it off;
  ask for it for long explorations (one process, many segments) or to halve the weights' memory.
* ``cache``: diffusers' ``transformer.enable_cache``: ``fbc`` (FirstBlockCache: when the first
  block's residual changed less than ``cache_threshold`` (default 0.05) since the last computed step,
  the other blocks are skipped and their last residual reused) or ``taylorseer`` (TaylorSeer:
  between full computations every ``cache_interval`` (default 2) steps, after 3 full ones, the blocks are
  skipped and the transformer's output projection is predicted by a first-order Taylor expansion —
  diffusers' "lite" mode; predicting each block's modules instead needs more memory than an H200 has).
  Interval 2 with Sage + compiled blocks: 3.32 s per 480p step over 50 steps (stock 8.01), and on the
  small trained Wan of benchmarks/train_video.py no PSNR loss on held-out clips (RESULTS.md, issue 14).
  Approximations whose cost depends on the trained weights: random weights say nothing about them, a
  small model only a little. Off unless asked for.

Nothing here changes the conditioning or the sampler: the same inputs give the same video up
to the approximations named above (``benchmarks/video.py --speed`` measures each).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field

import torch

from matrix_world.errors import InputError

ATTENTION_BACKENDS = {"native": "native", "cudnn": "_native_cudnn", "flash": "flash", "flash3": "_flash_3", "sage": "sage"}
ATTENTION_CHOICES = ("auto", *ATTENTION_BACKENDS)
COMPILE_CHOICES = ("auto", "off", "blocks")
FP8_CHOICES = ("auto", "off", "rowwise")
CACHE_CHOICES = ("off", "fbc", "taylorseer")
TAYLORSEER_INTERVAL = 2  # full computations every 2nd step after the first 3: half the passes (RESULTS.md, issue 14)
COMPILE_MIN_PASSES = 24  # compile (~13 s on an H200) pays for itself after ~21 passes of 0.61 s saved each
_PACKAGES = {"flash": ("flash_attn", "pip install flash-attn"),
             "flash3": ("flash_attn_interface", "build flash-attention's hopper/ folder (FlashAttention-3)"),
             "sage": ("sageattention", "build SageAttention >= 2.1.1 from github.com/thu-ml/SageAttention (not on PyPI)")}


@dataclass(frozen=True)
class SpeedPlan:
    """What :func:`apply_speed` does, each choice with its reason."""

    attention: str = "native"  # a key of ATTENTION_BACKENDS
    compile: str = "off"  # off | blocks
    fp8: str = "off"  # off | rowwise
    cache: str = "off"  # off | fbc | taylorseer
    cache_threshold: float | None = None  # fbc: relative change of the first block's residual
    cache_interval: int | None = None  # taylorseer: full computations every this many steps
    reasons: dict[str, str] = field(default_factory=dict)

    def approximations(self) -> list[str]:
        """The options of this plan that change the output (beyond floating-point reordering)."""
        return [name for name, on in (("sage attention", self.attention == "sage"), ("fp8", self.fp8 != "off"),
                                      (f"{self.cache} cache", self.cache != "off")) if on]

    def to_dict(self) -> dict:
        return {"attention": self.attention, "compile": self.compile, "fp8": self.fp8, "cache": self.cache,
                "cache_threshold": self.cache_threshold, "cache_interval": self.cache_interval,
                "approximations": self.approximations(), "reasons": dict(self.reasons)}


def check_speed_options(attention: str, compile: str, fp8: str, cache: str, cache_threshold: float | None = None,
                        cache_interval: int | None = None) -> None:
    """InputError (one line) for an unknown option value."""
    for option, value, allowed in (("--video-attention", attention, ATTENTION_CHOICES), ("--video-compile", compile, COMPILE_CHOICES),
                                   ("--video-fp8", fp8, FP8_CHOICES), ("--video-cache", cache, CACHE_CHOICES)):
        if value not in allowed:
            raise InputError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    if cache_threshold is not None and not (0.0 < cache_threshold < 10.0):
        raise InputError(f"--video-cache-threshold must be a number in (0, 10), got {cache_threshold}")
    if cache_interval is not None and not (isinstance(cache_interval, int) and 1 <= cache_interval <= 50):
        raise InputError(f"--video-cache-interval must be an integer in [1, 50], got {cache_interval!r}")
    if cache_threshold is not None and cache != "fbc":
        raise InputError(f"--video-cache-threshold is FirstBlockCache's (--video-cache fbc), not {cache!r}'s")
    if cache_interval is not None and cache != "taylorseer":
        raise InputError(f"--video-cache-interval is TaylorSeer's (--video-cache taylorseer), not {cache!r}'s")


def _capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def sage_installed() -> bool:
    """SageAttention of a version diffusers' ``sage`` backend accepts (>= 2.1.1)."""
    if not _installed("sageattention"):
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = tuple(int(p) for p in version("sageattention").split(".")[:3] if p.isdigit())
    except PackageNotFoundError:
        return False
    return parts >= (2, 1, 1)


LOWVRAM_COMPILE_BLOCKER = ("compiled blocks under lowvram's group offloading: its onload hooks break every block's "
                           "graph, dynamo recompiles them per block, and the attempt ran a 128 GB host out of memory")
"""Why compiled blocks stay off in memory mode lowvram (H200, 2026-12-03: benchmarks/RESULTS.md, issue 14)."""


def memory_speed_blockers(memory_mode: str) -> dict[str, str]:
    """The speed options a memory mode rules out -> {option: why}: compiled blocks under lowvram's group
    offloading; FP8 wherever the weights leave the GPU (torchao quantises the weights where they sit)."""
    blockers = {}
    if memory_mode == "lowvram":
        blockers["compile"] = LOWVRAM_COMPILE_BLOCKER
    if memory_mode in ("offload", "lowvram"):
        blockers["fp8"] = f"FP8 needs the weights on the GPU (memory mode full), not {memory_mode}"
    return blockers


def check_memory_speed(memory_mode: str, *, compile: str, fp8: str) -> dict[str, str]:
    """Refuse a requested speed option that ``memory_mode`` rules out; else -> :func:`memory_speed_blockers`.
    The pipeline calls this before any stage runs, :func:`plan_speed` again at the video stage."""
    blockers = memory_speed_blockers(memory_mode)
    for option, value, requested in (("compile", compile, "blocks"), ("fp8", fp8, "rowwise")):
        if value == requested and option in blockers:
            raise InputError(f"--video-{option} {requested}: {blockers[option]}; use --video-{option} off (or auto) "
                             f"with --memory {memory_mode}")
    return blockers


def plan_speed(*, attention: str = "auto", compile: str = "auto", fp8: str = "auto", cache: str = "off",
               cache_threshold: float | None = None, cache_interval: int | None = None, device: torch.device,
               passes: int, memory_mode: str,
               approximate: bool = False, dtype: torch.dtype = torch.bfloat16) -> SpeedPlan:
    """The one ``auto`` rule of the video speed options -> a :class:`SpeedPlan`.

    passes: transformer passes of the call (steps x 2 under CFG); memory_mode: the pipeline's
    (full | offload | lowvram); approximate: ``auto`` may pick approximations (Sage, FP8); dtype: the
    transformer's (cuDNN's and Sage's attention kernels take only fp16 / bf16: a float32 model gets torch SDPA)."""
    check_speed_options(attention, compile, fp8, cache, cache_threshold, cache_interval)
    device = torch.device(device)
    cap = _capability(device)
    reasons: dict[str, str] = {}
    # attention
    half = dtype in (torch.float16, torch.bfloat16)
    if attention == "auto":
        if not half:
            attention, reasons["attention"] = "native", f"auto: torch SDPA (cuDNN and Sage attention take fp16 / bf16, the model is {str(dtype).removeprefix('torch.')})"
        elif approximate and cap is not None and cap >= (8, 0) and sage_installed():
            attention, reasons["attention"] = "sage", "auto: SageAttention installed (an approximation, allowed by the preset)"
        elif cap is not None and cap >= (9, 0):
            attention, reasons["attention"] = "cudnn", f"auto: cuDNN attention on compute capability {cap[0]}.{cap[1]}"
        else:
            attention, reasons["attention"] = "native", "auto: torch SDPA" + ("" if cap else " (no CUDA device)")
    else:
        if attention != "native" and cap is None:
            raise InputError(f"--video-attention {attention} needs a CUDA device; use native (or auto) on the CPU")
        if attention != "native" and not half:
            raise InputError(f"--video-attention {attention} needs a float16 / bfloat16 model, this one is {dtype}; use native (or auto)")
        package = _PACKAGES.get(attention)
        if package and not (sage_installed() if attention == "sage" else _installed(package[0])):
            raise InputError(f"--video-attention {attention} needs the package {package[0]}: {package[1]}")
        reasons["attention"] = "requested"
    blockers = check_memory_speed(memory_mode, compile=compile, fp8=fp8)
    # compile
    compile_blocker = blockers.get("compile")
    if compile == "auto":
        if cap is None:
            compile, reasons["compile"] = "off", "auto: no CUDA device"
        elif compile_blocker:
            compile, reasons["compile"] = "off", f"auto: off ({compile_blocker})"
        elif passes < COMPILE_MIN_PASSES:
            compile, reasons["compile"] = "off", f"auto: {passes} transformer passes do not repay the compile (< {COMPILE_MIN_PASSES})"
        else:
            compile, reasons["compile"] = "blocks", f"auto: {passes} transformer passes repay the compile"
    else:
        reasons["compile"] = "requested"
    # fp8
    if cap is None or cap < (8, 9):
        fp8_blocker: str | None = "FP8 matmuls need a GPU of compute capability >= 8.9 (Ada, Hopper)"
    elif not _installed("torchao"):
        fp8_blocker = "FP8 needs torchao: pip install torchao"
    else:
        fp8_blocker = blockers.get("fp8")
    if fp8 == "auto":
        if fp8_blocker:
            fp8, reasons["fp8"] = "off", f"auto: {fp8_blocker}"
        else:
            fp8, reasons["fp8"] = "off", ("auto: off (its first call costs ~186 s of quantise + recompile on an H200, "
                                          "repaid after ~300 passes; --video-fp8 rowwise for long runs or half the memory)")
    elif fp8 == "rowwise":
        if fp8_blocker:
            raise InputError(f"--video-fp8 rowwise: {fp8_blocker}")
        reasons["fp8"] = "requested"
    else:
        reasons["fp8"] = "requested"
    # cache
    threshold = interval = None
    if cache == "fbc":
        threshold = 0.05 if cache_threshold is None else float(cache_threshold)
    elif cache == "taylorseer":
        interval = TAYLORSEER_INTERVAL if cache_interval is None else int(cache_interval)
    reasons["cache"] = "requested" if cache != "off" else "off unless asked for (its cost depends on the trained weights)"
    return SpeedPlan(attention=attention, compile=compile, fp8=fp8, cache=cache, cache_threshold=threshold,
                     cache_interval=interval, reasons=reasons)


def fp8_filter(module: torch.nn.Module, name: str) -> bool:
    """The layers FP8 quantisation takes: the Linear layers inside the transformer blocks."""
    return isinstance(module, torch.nn.Linear) and name.startswith("blocks.")


def apply_speed(pipe, plan: SpeedPlan, parallelize=None) -> dict:
    """Apply ``plan`` to ``pipe.transformer`` (after the LoRAs are fused and the weights placed) -> info.

    parallelize: ``fn(transformer, plan) -> info`` (generation.video_parallel: context parallelism), called
    after the attention backend is set (diffusers' ``enable_parallelism`` checks it) and before the cache
    hooks and the compilation (the compiled blocks see the context-parallel hooks); its info is ``parallel``."""
    tr = pipe.transformer
    info = plan.to_dict()
    if plan.fp8 == "rowwise":
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        except ImportError as exc:
            raise InputError(f"--video-fp8 rowwise needs torchao (pip install torchao): {exc}") from None
        quantize_(tr, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_filter)
        info["fp8_layers"] = sum(1 for name, m in tr.named_modules() if name.startswith("blocks.") and "Float8" in type(
            getattr(m, "weight", None)).__name__)
    tr.set_attention_backend(ATTENTION_BACKENDS[plan.attention])
    if parallelize is not None:
        info["parallel"] = parallelize(tr, plan)
    if plan.cache == "fbc":
        from diffusers.hooks import FirstBlockCacheConfig

        tr.enable_cache(FirstBlockCacheConfig(threshold=plan.cache_threshold))
    elif plan.cache == "taylorseer":
        from diffusers.hooks import TaylorSeerCacheConfig

        # lite mode: in a predicted step the 40 blocks are skipped and only proj_out's output is predicted.
        # Predicting every block's attention and FFN outputs instead keeps first-order Taylor factors of
        # [1, 37800, 5120] per module and CFG branch: at 480p it ran out of the H200's 139 GB (2026-12-02).
        tr.enable_cache(TaylorSeerCacheConfig(cache_interval=plan.cache_interval, use_lite_mode=True))
    if plan.compile == "blocks":
        if plan.attention == "sage":
            info["sage_op"] = install_sage_op()
        # the cache hooks and group offloading's onload (lowvram) run outside the graph (diffusers marks them
        # compiler-disabled; fullgraph=True fails on them: "Skip inlining torch.compiler.disable()d function
        # ModuleGroup.onload_", H200 2026-12-03): one graph per stretch between hooks then; else one per block
        fullgraph = plan.cache == "off" and not group_offloaded(tr)
        tr.compile_repeated_blocks(fullgraph=fullgraph)
        info["compile_fullgraph"] = fullgraph
    return info


def group_offloaded(module: torch.nn.Module) -> bool:
    """Whether diffusers' group offloading hooks (memory mode lowvram) sit on ``module`` or a submodule."""
    for m in module.modules():
        registry = getattr(m, "_diffusers_hook", None)
        if registry is not None and registry.get_hook("group_offloading") is not None:
            return True
    return False


@functools.cache
def sage_op():
    """SageAttention as a torch custom op ``matrix_world::sageattn`` (NHD layout): the compiler treats it
    as one opaque kernel with a known output shape, where tracing into ``sageattention.sageattn`` fails
    ("torch.* op returned non-Tensor": its CUDA kernels are plain pybind functions)."""

    @torch.library.custom_op("matrix_world::sageattn", mutates_args=())
    def sageattn_nhd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, sm_scale: float | None) -> torch.Tensor:
        from sageattention import sageattn

        return sageattn(q, k, v, tensor_layout="NHD", is_causal=is_causal, sm_scale=sm_scale)

    @sageattn_nhd.register_fake
    def _(q, k, v, is_causal, sm_scale):  # q, k, v [B, N, H, D] -> [B, N, H, Dv], q's dtype
        return q.new_empty((*q.shape[:-1], v.shape[-1]))

    return sageattn_nhd


def install_sage_op() -> str:
    """Route diffusers' ``sage`` attention backend through :func:`sage_op` (so compiled blocks keep one
    graph); calls that need the log-sum-exp (context parallelism) still go to ``sageattention.sageattn``.
    Idempotent; returns what it did."""
    from diffusers.models import attention_dispatch

    current = attention_dispatch.sageattn
    if getattr(current, "_matrix_world_op", False):
        return "already routed through matrix_world::sageattn"
    if current is None:
        raise InputError("--video-attention sage needs the package sageattention: " + _PACKAGES["sage"][1])
    op = sage_op()

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
        if tensor_layout != "NHD" or return_lse or kwargs:
            return current(q, k, v, tensor_layout=tensor_layout, is_causal=is_causal, sm_scale=sm_scale,
                           return_lse=return_lse, **kwargs)
        return op(q, k, v, bool(is_causal), sm_scale)

    sageattn._matrix_world_op = True  # type: ignore[attr-defined]
    attention_dispatch.sageattn = sageattn
    return "diffusers' sage backend routed through the custom op matrix_world::sageattn"


def remove_speed(pipe) -> None:
    """Undo the hooks of :func:`apply_speed` that can be undone (cache hooks, attention backend);
    FP8 weights and compiled blocks stay (reload the model to undo them)."""
    tr = pipe.transformer
    if getattr(tr, "is_cache_enabled", False):
        tr.disable_cache()
    tr.set_attention_backend("native")
