"""GPU memory modes for the video (and other diffusers) pipelines.

* ``full``    every component on the GPU (fastest; Wan2.1-I2V-14B needs ~60 GB at 480p).
* ``offload`` diffusers model CPU offload: one component on the GPU at a time (the 14B
              transformer alone: ~41 GB at 480p, ~52 GB at 720p, FACTS §A); VAE tiling on.
* ``lowvram`` diffusers group offloading, block level, one block per group, prefetched on a
              CUDA stream (weights live in CPU RAM; ~11 GB at 480p at ~1.07x the time over 50
              steps, FACTS §A). The VAE stays on the GPU (0.5 GB in float32; its encoder and decoder run
              once per latent-frame chunk and tile, each call re-streaming its weights when offloaded) and
              is tiled (:data:`VAE_TILE_PX`): untiled, its decode adds 11.2 GB at 480p and set the quality
              world's lowvram peak (RESULTS.md, 2026-12-04). With the VAE resident, the turbo video stage's
              time outside the transformer fell from 43.2 to 17.2 s on an H200 (RESULTS.md).
              The encoders stream a layer at a time (:data:`LOWVRAM_LEAF_LEVEL`), the transformer's
              top-level leftovers stay on the GPU (:func:`keep_unstreamed_groups_resident`), offloads
              do not wait for the GPU (``record_stream``), and torch pins through cudaHostRegister
              (:func:`use_registering_pinned_allocator`). Pinning the transformer's weights up front costs
              time and is repaid only over several passes (:func:`pin_up_front`); else, and always for the
              encoders (they run once), a group is pinned at a time. Up front, the weights are moved into page-locked 1 GiB chunks one storage at a time
              (:func:`pack_pinned`), so the host holds them once, not twice as diffusers' own up-front
              pinning does (its pinned copies, each rounded up to a power of two, beside the originals until
              the first pass). A whole world in lowvram peaks at 8.4 GB, at 1.18x (quality), 1.15-1.23x (fast)
              and 1.11-1.53x (turbo) the full-memory time (RESULTS.md, 2026-12-04).

``auto`` picks the fastest mode whose estimate fits the free GPU memory, with a margin. The
estimate is weights (bytes of the loaded modules) + transformer activations, calibrated on
the 14B measurements of FACTS §A (≈ 45 bytes per latent token per hidden unit, per batch
row). The choice, the estimates and the reason go into the info dict that the stage puts in
the manifest.

:func:`oom_guard` turns a CUDA out-of-memory error into one clear InputError that names the
next mode to try. The stage writes nothing itself (the run directory writes atomically), so
an OOM never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

from matrix_world.errors import InputError

MEMORY_MODES = ("full", "offload", "lowvram")
NEXT_MODE = {"full": "offload", "offload": "lowvram", "lowvram": None}
ACTIVATION_BYTES_PER_TOKEN_PER_DIM = 45.0  # 14B: 8.2 GB at 37,800 tokens (480p), 19.2 GB at 85,050 (720p), dim 5120
GB = 1e9  # decimal gigabytes, as FACTS §A reports


class VideoOutOfMemoryError(InputError):
    """CUDA ran out of memory; the message names the next memory mode to try."""


def _tensor_bytes(module) -> list[int]:
    """Bytes of each parameter and buffer of a module ([] for None)."""
    if module is None:
        return []
    return [t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers())]


def module_bytes(module) -> int:
    """Bytes of a module's parameters and buffers (0 for None)."""
    return sum(_tensor_bytes(module))


def host_available_gb() -> float | None:
    """The host RAM the kernel can give without swapping (``MemAvailable`` of /proc/meminfo), in GB;
    None where it cannot be read (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        return None
    return None


REGISTERING_PINNED_SETTINGS = "pinned_use_cuda_host_register:True,pinned_num_register_threads:8"
REGISTERED_ALLOCATOR = "cudaHostRegister, 8 threads"  # what use_registering_pinned_allocator returns once it switched


def use_registering_pinned_allocator() -> str:
    """Make torch's pinned host allocator page-lock with ``cudaHostRegister`` on 8 threads instead of
    ``cudaHostAlloc`` (7.98 against 1.75 GB/s on the H200 host, benchmarks/pinning.py): what lowvram's
    streamed offloading pays to pin weights. Safe at any time: torch frees each block the way it was
    allocated. Left alone where PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF already set a pinned_
    option (the user's choice wins). Returns which allocator pins from now on, for the stage info."""
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + "," + os.environ.get("PYTORCH_ALLOC_CONF", "")
    if "pinned_" in conf:
        return "as PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF set it"
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or getattr(torch._C, "_cuda_cudaCachingAllocator_set_allocator_settings", None)
    if setter is None:
        return "cudaHostAlloc (this torch cannot switch its pinned allocator at run time)"
    setter(REGISTERING_PINNED_SETTINGS)
    return REGISTERED_ALLOCATOR


PIN_UP_FRONT_MIN_PASSES = 32
"""Fewest transformer passes for which pinning up front repays its cost under torch's default pinned
allocator (cudaHostAlloc), where the registering allocator cannot be switched on. Measured with diffusers' own
up-front pinning of every streamed weight on an H200 host (benchmarks/pinning.py and the turbo
worlds of 2026-12-02, benchmarks/RESULTS.md): it page-locks at 1.75 GB/s, so FLUX + T5 (50.8 GB rounded)
take ~29 s up front and Wan + UMT5 + CLIP (67.4 GB) ~38 s; pinning a group at a time instead costs a host
copy per pass (~32 GB/s, then the 55 GB/s DMA): FLUX 1.41 s a pass against 0.47 s pinned up front
(break-even ≈ 31 passes)."""

PIN_UP_FRONT_MIN_PASSES_REGISTERED = 8
"""The same under the cudaHostRegister allocator lowvram switches to (:func:`use_registering_pinned_allocator`),
for the transformer alone (the only streamed module that runs more than once; its encoders pin a group at a
time either way). :func:`pack_pinned` moved 33.6 GB in 6.73-7.40 s and 46.7 GB in 9.34-10.44 s on an H200 host
(4.5-5.0 GB/s, RESULTS.md 2026-12-04), so FLUX.1-dev's 23.8 GB cost ~5 s up front; a FLUX pass at 1024x512
takes 1.22-1.40 s pinned a group at a time against ~0.45 s pinned up front: break-even 5-7 passes. So
turbo's 8 FLUX passes and the fast / quality presets' 28-100 passes pin up front, turbo's 4 Wan passes a group
at a time (the Wan pass is compute-bound and gains little: 4.84 s a group at a time against 4.77 up front)."""


PIN_CHUNK_BYTES = 1 << 30
"""Size of the page-locked chunks :func:`pack_pinned` moves the weights into: a power of two, which torch's
pinned allocator would round a block up to anyway, and far above the largest weight (Wan2.1-14B's FFN matrix:
141 MB), so a chunk's unused tail stays small."""
PIN_ALIGN = 512  # bytes: each storage starts on this boundary inside its chunk (any dtype's element size divides it)


def pin_up_front(weights_gb: float, available_gb: float | None, *, passes: int | None = None, margin_gb: float = 8.0,
                 registered: bool = False) -> tuple[bool, str]:
    """(pin the transformer's ``weights_gb`` when group offloading starts?, reason). Up front is the fastest per
    pass (transfers overlap the compute from the first pass) but pays for page-locking them before the first;
    a group at a time (diffusers' ``low_cpu_mem_usage``) when ``passes`` (the transformer passes this
    placement will run; None: unknown, many) are too few to repay that (``registered``: the faster
    cudaHostRegister allocator pins, :data:`PIN_UP_FRONT_MIN_PASSES_REGISTERED`). Up front the weights are
    moved, not copied (:func:`pack_pinned`): it needs one chunk of free host RAM, plus ``margin_gb``."""
    least = PIN_UP_FRONT_MIN_PASSES_REGISTERED if registered else PIN_UP_FRONT_MIN_PASSES
    if passes is not None and passes < least:
        return False, (f"pinned a group at a time: {passes} transformer passes do not repay pinning "
                       f"{weights_gb:.1f} GB up front (< {least})")
    if available_gb is None:
        return True, f"pinned up front ({weights_gb:.1f} GB moved into pinned chunks; the host's free RAM is unknown)"
    need = PIN_CHUNK_BYTES / GB + margin_gb
    if need <= available_gb:
        return True, f"pinned up front: {weights_gb:.1f} GB moved into pinned chunks ({available_gb:.1f} GB host RAM available)"
    return False, (f"pinned a group at a time: moving the weights into pinned chunks needs {need:.1f} GB of free host RAM, "
                   f"{available_gb:.1f} GB available")


def pack_pinned(modules, *, chunk_bytes: int = PIN_CHUNK_BYTES, pin: bool = True) -> dict:
    """Move every CPU parameter and buffer of ``modules`` into page-locked chunks of ``chunk_bytes``: storage
    by storage, each copied into the current chunk (at a :data:`PIN_ALIGN` boundary) and its tensors pointed at
    the copy (``tensor.data``; tensors that shared a storage share the copy), so the original is freed before
    the next is copied. The host then holds the weights once, pinned, and needs one chunk beyond them; torch's
    pinned allocator rounds nothing (a chunk is a power of two). Group offloading finds them pinned and pins
    nothing more (diffusers skips ``pin_memory`` for pinned tensors). A storage larger than a chunk gets a
    chunk of its own. Call before group offloading, which keeps references to the tensors it finds.

    ``pin=False``: ordinary memory in the same layout (CPU tests). Returns {'packed_gb', 'chunks', 'seconds'}.
    """
    started = time.perf_counter()
    storages: dict[int, tuple[torch.UntypedStorage, dict[int, torch.Tensor]]] = {}
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if t.device.type != "cpu" or (pin and t.is_pinned()):
                continue
            st = t.untyped_storage()
            storages.setdefault(st.data_ptr(), (st, {}))[1][id(t)] = t
    chunk, used, chunks, packed = None, 0, 0, 0
    while storages:
        _, (st, tensors) = storages.popitem()  # popped: the original storage dies with its last tensor's swap
        n = st.nbytes()
        start = -(-used // PIN_ALIGN) * PIN_ALIGN
        if n > chunk_bytes:  # a chunk of its own; the current chunk stays open
            target, start = torch.empty(n, dtype=torch.uint8, pin_memory=pin), 0
            chunks += 1
        else:
            if chunk is None or start + n > chunk_bytes:
                chunk, start = torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=pin), 0
                chunks += 1
            target, used = chunk, start + n
        target[start:start + n].copy_(torch.empty(0, dtype=torch.uint8).set_(st))
        for t in tensors.values():
            es = t.element_size()
            t.data = torch.empty(0, dtype=t.dtype).set_(target.untyped_storage(), (start + t.storage_offset() * es) // es,
                                                        t.size(), t.stride())
        packed += n
        del st, tensors, target
    return {"packed_gb": round(packed / GB, 3), "chunks": chunks, "seconds": round(time.perf_counter() - started, 3)}


VAE_TILE_PX = (384, 320)
"""The Wan VAE's tile (size, stride) in pixels where it is tiled (offload, lowvram). Measured on an H200 with the
float32 VAE at 480p, 81 frames (benchmarks/vae.py, RESULTS.md 2026-12-04), decode seconds / peak rise GB:
untiled 3.54 / 11.23, 512:448 4.53 / 6.03, 384:320 5.02 / 3.63, diffusers' default 256:192 6.54 / 2.17; the
encode 2.74 s at 384:320 against 3.03 untiled. 384:320 keeps the decode under lowvram's streamed transformer
(~9 GB) at 1.5 s more; a smaller tile lowers nothing that sets the peak and costs more."""


def vae_decode_gb(height: int, width: int, num_frames: int, *, tiled: bool = False) -> float:
    """Estimated rise of the peak GPU memory (GB) in one seam-aware decode by the float32 Wan VAE.

    Untiled: 11.2 GB at 480x960 x 81 frames, linear in pixels x frames (24.98 GB measured at 720p, 25.3
    predicted). Tiled at :data:`VAE_TILE_PX`: a fixed part for the tiles' activations and a part linear in the
    output, fitted on 3.63 GB (480p) and 4.59 GB (720p). benchmarks/vae.py, H200, 2026-12-04."""
    scale = (height * width) / (480 * 960) * num_frames / 81
    return 2.86 + 0.77 * scale if tiled else 11.2 * scale


def set_vae_tiling(vae, on: bool, *, tile: tuple[int, int] | None = None) -> None:
    """Tile ``vae``'s encode and decode or not. A Wan VAE (diffusers' ``AutoencoderKLWan``, which takes tile
    sizes) tiles at ``tile`` (size, stride) in pixels, default :data:`VAE_TILE_PX`; another VAE at its own default."""
    if not on:
        vae.disable_tiling()
    elif hasattr(vae, "tile_sample_stride_height"):
        size, stride = tile or VAE_TILE_PX
        vae.enable_tiling(tile_sample_min_height=size, tile_sample_min_width=size,
                          tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    else:
        vae.enable_tiling()


def estimate_memory_gb(pipe, *, height: int, width: int, num_frames: int, cfg_batch: bool = False) -> dict[str, float]:
    """Estimated peak GPU memory (GB) of each mode for one generation with ``pipe``."""
    tr = pipe.transformer
    p_t, p_h, p_w = tr.config.patch_size
    s, t = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
    tokens = ((num_frames - 1) // t + 1) // p_t * (height // s // p_h) * (width // s // p_w)
    dim = tr.config.num_attention_heads * tr.config.attention_head_dim
    act = ACTIVATION_BYTES_PER_TOKEN_PER_DIM * tokens * dim * (2 if cfg_batch else 1)
    weights = {name: module_bytes(getattr(pipe, name, None)) for name in ("transformer", "text_encoder", "image_encoder", "vae")}
    block = weights["transformer"] / max(len(tr.blocks), 1)
    vae_decode = vae_decode_gb(height, width, num_frames) * GB
    vae_tiled = vae_decode_gb(height, width, num_frames, tiled=True) * GB
    full = sum(weights.values()) + max(act, vae_decode)
    offload = max(weights["transformer"] + act, weights["text_encoder"], weights["vae"] + vae_tiled)
    lowvram = 3 * block + act + vae_tiled
    return {"full": full / GB, "offload": offload / GB, "lowvram": lowvram / GB}


FLUX_ACTIVATION_BYTES_PER_TOKEN_PER_DIM = 215.0  # FLUX.1-dev: +3.97 GB (3.7 GiB) from 2,048 to 8,192 image tokens, dim 3072


def estimate_flux_memory_gb(pipe, *, height: int) -> dict[str, float]:
    """Estimated peak GPU memory (GB) of each mode for one FLUX panorama of ``height`` x 2*height.

    Weights are the loaded modules' bytes; activations grow with the image tokens
    ((height/16) x (2*height/16)), calibrated on the FLUX.1-dev measurements in
    benchmarks/RESULTS.md (23.6 / 27.3 GiB = 25.3 / 29.3 GB at 1024x512 / 2048x1024 for the transformer).
    """
    tr = pipe.transformer
    tokens = (height // 16) * (2 * height // 16)
    dim = tr.config.num_attention_heads * tr.config.attention_head_dim
    act = FLUX_ACTIVATION_BYTES_PER_TOKEN_PER_DIM * tokens * dim
    weights = {name: module_bytes(getattr(pipe, name, None)) for name in ("transformer", "text_encoder", "text_encoder_2", "vae")}
    blocks = len(getattr(tr, "transformer_blocks", [])) + len(getattr(tr, "single_transformer_blocks", []))
    block = weights["transformer"] / max(blocks, 1)
    vae_decode = 2.0 * GB * (height * 2 * height) / (1024 * 2048)
    full = sum(weights.values()) + max(act, vae_decode)
    offload = max(weights["transformer"] + act, weights["text_encoder_2"], weights["vae"] + vae_decode)
    lowvram = 3 * block + act + vae_decode
    return {"full": full / GB, "offload": offload / GB, "lowvram": lowvram / GB}


def free_gpu_gb(device) -> float | None:
    """Free memory on a CUDA device in GB (None for other devices)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free / GB


def choose_memory_mode(requested: str, *, estimate_gb: dict[str, float], free_gb: float | None, margin_gb: float = 2.0) -> tuple[str, str]:
    """(mode, reason). ``requested`` is 'auto' or one of MEMORY_MODES (forced)."""
    if requested != "auto":
        if requested not in MEMORY_MODES:
            raise InputError(f"memory mode must be 'auto' or one of {MEMORY_MODES}, got {requested!r}")
        return requested, "forced"
    if free_gb is None:
        return "full", "not a CUDA device: everything stays on it"
    for mode in MEMORY_MODES:
        if estimate_gb[mode] + margin_gb <= free_gb:
            return mode, f"fastest mode that fits: needs ~{estimate_gb[mode]:.1f} GB of {free_gb:.1f} GB free"
    return "lowvram", f"even lowvram (~{estimate_gb['lowvram']:.1f} GB) may not fit in {free_gb:.1f} GB free"


LOWVRAM_RESIDENT = ("vae",)  # components lowvram keeps on the GPU (the VAE: see the module docstring)
LOWVRAM_LEAF_LEVEL = ("text_encoder", "text_encoder_2", "image_encoder")
"""Components lowvram streams a layer at a time: the text and image encoders. They run once a stage, and
transformers' encoders hold their blocks one level down (T5's ``encoder.block``), so diffusers' block level
finds no block list at their top and moves the whole encoder with ``module.to()`` both ways: on the GPU
whole (UMT5-XXL: 11.4 GB, above the transformer's lowvram peak) and back by a device-to-host copy into new
pageable memory (cProfile of the turbo world in lowvram, H200: 10.9 s for the four encoders' way back)."""


def _group_offload(module: torch.nn.Module, **kwargs) -> None:
    """diffusers' group offloading of one component (its own method on diffusers models, the hook function on
    transformers' encoders), as ``DiffusionPipeline.enable_group_offload`` does for each."""
    own = getattr(module, "enable_group_offload", None)
    if callable(own):
        own(**kwargs)
    else:
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(module=module, **kwargs)


def keep_unstreamed_groups_resident(module: torch.nn.Module, device: torch.device) -> float:
    """Keep on ``device`` the groups that block-level group offloading moves without its stream: a model's
    top-level leftovers (embedders, output head, modulation tables; Wan2.1-14B: 0.5 GB, FLUX: 0.13 GB). diffusers
    moves them with ``module.to()`` every pass, back to the host by a device-to-host copy into new pageable memory
    (about 0.7 GB/s in the turbo world's profile: ~0.4 s a Wan pass, 40 s over quality's 100). After this their
    first onload is their last move. Returns the GB kept. Only for streamed offloading (CUDA): without a stream
    every group is such a group."""
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    kept = 0
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        group = getattr(hook, "group", None)
        if group is None or group.stream is not None or group.offload_leader is not sub or group.offload_to_disk_path:
            continue
        group.offload_device = device  # its offload becomes module.to(device): a no-op once onloaded
        tensors = {id(t): t for m in group.modules for t in (*m.parameters(), *m.buffers())}
        tensors.update((id(t), t) for t in (*group.parameters, *group.buffers))  # diffusers lists some twice
        kept += sum(t.numel() * t.element_size() for t in tensors.values())
    return kept / GB


def apply_memory_mode(pipe, mode: str, device, *, vae_tiling: bool | None = None, passes: int | None = None) -> dict:
    """Place ``pipe`` for ``mode`` on ``device``; returns {'memory_mode', 'vae_tiling', 'placement_s'}
    (+ in lowvram 'pinning': how streamed offloading pins the weights, :func:`pin_up_front`, for ``passes``
    transformer passes (None: unknown), 'packed' where they were pinned up front (:func:`pack_pinned`),
    'pinned_allocator', 'resident', 'leaf_level', 'resident_leftovers_gb').
    ``vae_tiling`` None: off in full memory, on (:func:`set_vae_tiling`) in offload and lowvram.

    Lowvram on CUDA: the VAE on the GPU (:data:`LOWVRAM_RESIDENT`), the encoders streamed a layer at a time
    (:data:`LOWVRAM_LEAF_LEVEL`), the transformer a block at a time with its top-level leftovers kept
    resident (:func:`keep_unstreamed_groups_resident`), pinned by the cudaHostRegister allocator
    (:func:`use_registering_pinned_allocator`).

    Call once on a freshly loaded pipeline (components on the CPU); LoRAs must be loaded and
    fused before (group offloading keeps its own copy of the weights).
    """
    device = torch.device(device)
    if mode not in MEMORY_MODES:
        raise InputError(f"memory mode must be one of {MEMORY_MODES}, got {mode!r}")
    started = time.perf_counter()
    info: dict = {"memory_mode": mode}
    if mode == "full" or device.type == "cpu":
        pipe.to(device)
    elif mode == "offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        use_stream = device.type == "cuda"  # streamed transfers read from pinned host memory
        modules = {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        resident = [name for name in LOWVRAM_RESIDENT if name in modules]
        streamed = [m for name, m in modules.items() if name not in resident]
        if use_stream:
            info["pinned_allocator"] = use_registering_pinned_allocator()
            # only the transformer runs ``passes`` times; the encoders run once, so pinning them up front would
            # cost what pinning them a group at a time costs, before the first step
            repeated = [modules["transformer"]] if "transformer" in modules else streamed
            weights = sum(module_bytes(m) for m in repeated)
            up_front, info["pinning"] = pin_up_front(weights / GB, host_available_gb(), passes=passes,
                                                     registered=info["pinned_allocator"] == REGISTERED_ALLOCATOR)
            if up_front:
                info["packed"] = pack_pinned(repeated)
        # record_stream: a group's offload does not wait for the GPU to finish the group (diffusers' default
        # synchronises the host with the compute stream after every block, so the next block's host copy leaves
        # the GPU idle); the freed blocks' memory is reused only once the compute stream has passed them.
        # low_cpu_mem_usage: group offloading keeps the tensors it finds and pins those not yet pinned as it
        # onloads them (a group at a time); after pack_pinned it finds all pinned. (Without it, diffusers pins
        # a copy of every tensor up front, beside the original.)
        common = {"onload_device": device, "offload_device": torch.device("cpu"), "use_stream": use_stream,
                  "record_stream": use_stream, "low_cpu_mem_usage": True}
        leaf = [name for name in LOWVRAM_LEAF_LEVEL if name in modules and use_stream]
        kept = 0.0
        for name, module in modules.items():
            if name in resident:
                module.to(device)
            elif name in leaf:
                _group_offload(module, offload_type="leaf_level", **common)
            else:
                _group_offload(module, offload_type="block_level", num_blocks_per_group=1, **common)
                if use_stream:
                    kept += keep_unstreamed_groups_resident(module, device)
        info.update(resident=resident, leaf_level=leaf, resident_leftovers_gb=round(kept, 3))
    tiling = bool(vae_tiling) if vae_tiling is not None else mode != "full"
    set_vae_tiling(pipe.vae, tiling)
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)
    return {**info, "vae_tiling": tiling, "placement_s": round(time.perf_counter() - started, 3)}


@contextlib.contextmanager
def oom_guard(mode: str, *, what: str = "video generation") -> Iterator[None]:
    """Turn a CUDA out-of-memory error into a VideoOutOfMemoryError suggesting the next mode."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        nxt = NEXT_MODE.get(mode)
        hint = (
            f"rerun with memory mode '{nxt}' (VideoConfig.memory)"
            if nxt
            else "use 480p, fewer frames, or a GPU with more free memory"
        )
        raise VideoOutOfMemoryError(f"CUDA out of memory during {what} in memory mode '{mode}'; {hint}. Nothing was written.") from None


def peak_memory_gb(device) -> float | None:
    """Peak allocated CUDA memory since the last reset (None off CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / GB
