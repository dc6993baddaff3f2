"""Video stage API, the classical ``fill`` backend, the ``oracle`` backend and memory modes."""

import numpy as np
import pytest
import torch

from matrix_world.cameras import make_pose, rotation_yaw
from matrix_world.errors import InputError

H, W = 32, 64


def _smooth_pano(seed=0):
    rng = np.random.default_rng(seed)
    lon = np.linspace(0, 2 * np.pi, W, endpoint=False)[None, :, None]
    lat = np.linspace(0, np.pi, H)[:, None, None]
    phase = rng.random(3)[None, None, :] * 6
    return (0.5 + 0.3 * np.sin(lon + phase) * np.cos(lat / 2) + 0.1 * np.cos(2 * lat + phase)).astype(np.float32)


def _poses(yaws, shifts=None):
    out = []
    for i, yaw in enumerate(yaws):
        t = torch.zeros(3, dtype=torch.float64) if shifts is None else torch.tensor(shifts[i], dtype=torch.float64)
        out.append(make_pose(rotation_yaw(float(yaw)), t).numpy())
    return np.stack(out)


# --------------------------------------------------------------------------- fill


def test_fill_fills_every_unknown_pixel_and_keeps_known_pixels_exact():
    from matrix_world.generation.video_fill import fill_video

    rng = np.random.default_rng(1)
    pano = _smooth_pano(1)
    rgb = np.stack([np.roll(pano, -8 * i, axis=1) for i in range(5)])  # one world seen by a camera turning 45° a frame
    mask = rng.random((5, H, W)) > 0.3
    mask[0, 8:20, -6:] = False  # frame 0 has holes too, one across the 180° seam
    mask[0, 8:20, :6] = False
    scaffold = np.where(mask[..., None], rgb, 0.0).astype(np.float32)
    out, info = fill_video(scaffold, mask, _poses([0, 45, 90, 135, 180]))
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert np.array_equal(out[mask], scaffold[mask])  # bit-exact known pixels
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    unknown = ~mask
    assert np.abs(out - rgb)[unknown].mean() < 0.02  # holes held 0; the fill recovers the smooth panorama
    # a pixel whose direction was observed in an earlier frame gets exactly that colour (static world)
    for i in range(1, 5):
        seen = np.any([np.roll(mask[j], -8 * (i - j), axis=1) for j in range(i)], axis=0)
        use = unknown[i] & seen
        assert use.sum() > 100 and np.array_equal(out[i][use], rgb[i][use])
    assert info["inpainted"] > 0 and info["from_memory"] > 0
    assert info["inpainted"] + info["from_memory"] == unknown.sum()


def test_fill_propagates_last_known_colour_along_the_rotation():
    """Camera 1 turned 90° right: its unknown pixels show what frame 0 saw in that direction,
    i.e. frame 0 shifted by W/4 columns (exactly, nearest pixel)."""
    from matrix_world.generation.video_fill import fill_video

    pano = _smooth_pano(2)
    rgb = np.stack([pano, np.zeros_like(pano)])
    mask = np.zeros((2, H, W), bool)
    mask[0] = True
    mask[1, :, :10] = True
    rgb[1][mask[1]] = 0.9
    out, info = fill_video(rgb, mask, _poses([0, 90]))
    expected = np.roll(pano, -W // 4, axis=1)
    assert np.array_equal(out[1][~mask[1]], expected[~mask[1]])
    assert info == {"from_memory": int((~mask[1]).sum()), "inpainted": 0}
    # max_age forgets: frame 2 (no new observation) falls back to inpainting from frame 2's own known pixels
    rgb3 = np.concatenate([rgb, np.full((1, H, W, 3), 0.2, np.float32)])
    mask3 = np.concatenate([mask, np.zeros((1, H, W), bool)])
    mask3[2, :, 20:] = True
    out3, info3 = fill_video(rgb3, mask3, _poses([0, 90, 90]), max_age=0)
    assert np.allclose(out3[2][~mask3[2]], 0.2, atol=1e-4)
    assert info3 == {"from_memory": 0, "inpainted": int((~mask3[1:]).sum())}


def test_inpainting_wraps_in_longitude():
    from matrix_world.generation.video_fill import inpaint_wrapped

    pano = _smooth_pano(3)
    hole = np.zeros((H, W), bool)
    hole[10:22, -5:] = True
    hole[10:22, :5] = True  # straddles the seam
    wrapped = inpaint_wrapped(pano, hole)
    flat = inpaint_wrapped(pano, hole, pad_cols=0)
    assert np.abs(wrapped - pano)[hole].mean() < np.abs(flat - pano)[hole].mean()
    # wrapping makes the fill independent of where the seam is: rolling commutes with filling
    for k in (7, 20, 41):
        rolled = inpaint_wrapped(np.roll(pano, k, 1), np.roll(hole, k, 1))
        assert np.abs(np.roll(wrapped, k, 1) - rolled).max() < 1e-6
    assert np.abs(np.roll(flat, 20, 1) - inpaint_wrapped(np.roll(pano, 20, 1), np.roll(hole, 20, 1), pad_cols=0)).max() > 1e-3


# --------------------------------------------------------------------------- stage API


def _stage_inputs(frames=5, h=H):
    rgb = np.stack([_smooth_pano(i) for i in range(frames)])
    mask = np.ones((frames, H, W), bool)
    mask[1:, 12:20, 30:40] = False
    rgb = np.where(mask[..., None], rgb, 0.0).astype(np.float32)
    return rgb, mask, _poses([0] * frames, [[0, 0, 0.1 * i] for i in range(frames)])


def test_generate_video_fill_backend_and_resizing():
    from matrix_world.generation.video import VideoConfig, generate_video

    rgb, mask, c2w = _stage_inputs()
    res = generate_video(VideoConfig(backend="fill", height=32), scaffold_rgb=rgb, scaffold_mask=mask, prompt="a room", c2w=c2w)
    assert res.frames.shape == (5, 32, 64, 3) and res.info["backend"] == "fill"
    assert np.array_equal(res.frames[mask], rgb[mask])
    # auto is resolved by the pipeline's one rule (tests/test_choosers.py), not here
    with pytest.raises(InputError, match="pipeline.video.choose"):
        generate_video(VideoConfig(height=16), scaffold_rgb=rgb, scaffold_mask=mask, prompt="a room", c2w=c2w)
    # resizing never bleeds unknown (black) pixels into known ones: a known resized pixel is the
    # area mean of known colours only
    from matrix_world.generation.video import resize_scaffold

    small_rgb, small_mask = resize_scaffold(rgb, mask, 16)
    full = np.stack([_smooth_pano(i) for i in range(5)])
    area = full.reshape(5, 16, 2, 32, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(small_rgb[small_mask], area[small_mask], atol=1e-6)
    assert not small_mask[1:, 6:10, 15:20].any()


def test_generate_video_bad_input():
    from matrix_world.generation.video import VideoConfig, generate_video
    from matrix_world.generation.weights import WeightsNotFoundError

    rgb, mask, c2w = _stage_inputs()
    run = lambda cfg, **kw: generate_video(cfg, **{"scaffold_rgb": rgb, "scaffold_mask": mask, "prompt": "p", "c2w": c2w, **kw})
    with pytest.raises(InputError, match="scaffold has 5 frames but the trajectory has 4"):
        run(VideoConfig(backend="fill", height=32), c2w=c2w[:4])
    with pytest.raises(InputError, match="divisible by 16"):
        run(VideoConfig(backend="fill", height=40))
    with pytest.raises(InputError, match="scaffold_mask"):
        run(VideoConfig(backend="fill", height=32), scaffold_mask=mask[:, :, :10])
    six = {"scaffold_rgb": np.concatenate([rgb, rgb[:1]]), "scaffold_mask": np.concatenate([mask, mask[:1]]), "c2w": np.concatenate([c2w, c2w[:1]])}
    with pytest.raises(InputError, match=r"4k\+1 \(e.g. 5 or 9\); got 6 frames"):
        run(VideoConfig(backend="wan", height=32), **six)
    with pytest.raises(WeightsNotFoundError, match=r"Wan-AI/Wan2.1-I2V-14B-480P-Diffusers.*huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"):
        run(VideoConfig(backend="wan"))
    with pytest.raises(InputError, match="video backend"):
        run(VideoConfig(backend="sora"))
    with pytest.raises(InputError, match=r"\[0, 1\] \(or uint8\)"):
        run(VideoConfig(backend="fill", height=32), scaffold_rgb=rgb * 255.0)
    as_uint8 = run(VideoConfig(backend="fill", height=32), scaffold_rgb=(rgb * 255).round().astype(np.uint8))
    assert np.abs(as_uint8.frames[mask] - rgb[mask]).max() <= 0.5 / 255 + 1e-6


class _FakeScene:
    kind, seed = "room", 3

    def camera_c2w(self, x, z, yaw_deg=0.0):
        return make_pose(rotation_yaw(yaw_deg), torch.tensor([x, -1.5, z], dtype=torch.float64))

    def render(self, c2w, height, backend="auto"):
        self.seen = c2w.clone()
        frames = np.stack([np.full((height, 2 * height, 3), float(c[2, 3]) / 10, np.float32) for c in c2w])
        return frames, np.ones(frames.shape[:3], np.float32), np.zeros(frames.shape[:3], bool)


def test_oracle_renders_the_scene_along_the_trajectory_from_its_start_camera():
    from matrix_world.datasets import synthetic_backends  # noqa: F401  (registers oracle; not only via other tests' imports)
    from matrix_world.generation.video import VideoConfig, generate_video

    rgb, mask, c2w = _stage_inputs()
    scene = _FakeScene()
    res = generate_video(VideoConfig(backend="oracle", height=32), scaffold_rgb=rgb, scaffold_mask=mask, prompt="p", c2w=c2w, scene=scene)
    np.testing.assert_allclose(scene.seen[:, 1, 3].numpy(), -1.5)  # trajectory placed at the scene's start camera
    np.testing.assert_allclose(res.frames[:, 0, 0, 0], 0.01 * np.arange(5), atol=1e-6)
    assert res.info["backend"] == "oracle" and res.info["scene_kind"] == "room"
    # a Trajectory turned right by 90°: moving "forward" (+z of the frame-0 camera) moves along the scene's +x
    from matrix_world.trajectory import Trajectory

    traj = Trajectory(torch.from_numpy(c2w), yaw=90.0)
    generate_video(VideoConfig(backend="oracle", height=32), scaffold_rgb=rgb, scaffold_mask=mask, prompt="p", c2w=traj, scene=scene)
    np.testing.assert_allclose(scene.seen[:, 0, 3].numpy(), 0.1 * np.arange(5), atol=1e-9)
    np.testing.assert_allclose(scene.seen[:, 2, 3].numpy(), 0.0, atol=1e-9)


# --------------------------------------------------------------------------- memory modes


def test_memory_mode_choice_estimates_and_oom_message():
    from types import SimpleNamespace

    from diffusers import WanTransformer3DModel
    from matrix_world.generation.memory import (
        VideoOutOfMemoryError,
        choose_memory_mode,
        estimate_memory_gb,
        oom_guard,
    )
    from matrix_world.generation.wan_pipeline import WAN_I2V_14B_CONFIG

    with torch.device("meta"):
        tr = WanTransformer3DModel(**WAN_I2V_14B_CONFIG)
    tr.to(torch.bfloat16)  # meta tensors: only sizes matter here
    umt5_xxl = torch.nn.Module()
    umt5_xxl.register_parameter("w", torch.nn.Parameter(torch.empty(5_680_000_000, dtype=torch.bfloat16, device="meta")))
    pipe = SimpleNamespace(transformer=tr, text_encoder=umt5_xxl, vae_scale_factor_spatial=8, vae_scale_factor_temporal=4)
    est480 = estimate_memory_gb(pipe, height=480, width=960, num_frames=81)
    est720 = estimate_memory_gb(pipe, height=720, width=1440, num_frames=81)
    # calibrated on the measured stock peaks (FACTS §A): 41 GB at 480p, 52 GB at 720p (transformer alone)
    assert 38 < est480["offload"] < 44 and 48 < est720["offload"] < 56
    assert est480["lowvram"] < 24 < est480["offload"] <= est480["full"]
    assert 50 < est480["full"] < 56  # + the UMT5-XXL text encoder (bf16)
    assert choose_memory_mode("auto", estimate_gb=est480, free_gb=79.0)[0] == "full"
    assert choose_memory_mode("auto", estimate_gb=est480, free_gb=50.0)[0] == "offload"
    assert choose_memory_mode("auto", estimate_gb=est480, free_gb=23.0)[0] == "lowvram"
    assert choose_memory_mode("auto", estimate_gb=est480, free_gb=None)[0] == "full"
    assert choose_memory_mode("lowvram", estimate_gb=est480, free_gb=200.0) == ("lowvram", "forced")
    with pytest.raises(InputError, match="memory mode"):
        choose_memory_mode("tiny", estimate_gb=est480, free_gb=10.0)
    with pytest.raises(VideoOutOfMemoryError, match="mode 'full'.*'offload'.*Nothing was written"), oom_guard("full"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    with pytest.raises(VideoOutOfMemoryError, match="mode 'lowvram'; use 480p"), oom_guard("lowvram"):
        raise torch.OutOfMemoryError("CUDA out of memory")


def test_lowvram_pins_the_weights_up_front_only_where_the_passes_repay_it_and_a_chunk_fits(monkeypatch):
    """Up front (weights moved into pinned chunks, pack_pinned) where the transformer passes repay it and the host
    has a chunk + margin free; else a group at a time. Group offloading always keeps the tensors it finds
    (low_cpu_mem_usage): after packing they are pinned, so it copies nothing."""
    from types import SimpleNamespace

    from matrix_world.generation import memory

    lin = torch.nn.Linear(5, 3)  # weight 15 floats = 60 B, bias 3 floats = 12 B
    assert memory.module_bytes(lin) == 72 and memory.module_bytes(None) == 0
    chunk_gb = memory.PIN_CHUNK_BYTES / memory.GB
    assert memory.pin_up_front(49.1, 120.0)[0] is True
    assert memory.pin_up_front(49.1, chunk_gb + 8.0)[0] is True  # the weights are moved, not copied: one chunk is enough
    up, why = memory.pin_up_front(49.1, 5.0)
    assert up is False and f"{chunk_gb + 8.0:.1f} GB" in why and "5.0 GB available" in why
    assert memory.pin_up_front(10.0, None)[0] is True
    few = memory.PIN_UP_FRONT_MIN_PASSES - 1  # too few passes to repay pinning up front, however much RAM
    up, why = memory.pin_up_front(49.1, 1000.0, passes=few)
    assert up is False and f"{few} transformer passes" in why and "49.1 GB" in why
    assert memory.pin_up_front(49.1, 1000.0, passes=memory.PIN_UP_FRONT_MIN_PASSES)[0] is True
    avail = memory.host_available_gb()
    assert avail is None or avail > 0

    calls = []

    class FakeVae(torch.nn.Linear):  # a module (kept on the GPU by lowvram) with diffusers' tiling switches
        def enable_tiling(self):
            calls.append("tiling")

        def disable_tiling(self):
            calls.append("no tiling")

    vae = FakeVae(1000, 1000)  # 4 MB: would dominate the weights if it were counted
    clip = torch.nn.Linear(2, 2)  # an encoder: streamed a layer at a time
    pipe = SimpleNamespace(components={"transformer": lin, "vae": vae, "image_encoder": clip, "scheduler": object()}, vae=vae)
    placed = {}  # component -> the group offloading asked for it
    packed = []  # the modules pack_pinned was given
    monkeypatch.setattr(memory, "_group_offload", lambda module, **kw: placed.__setitem__(module, kw))
    monkeypatch.setattr(memory, "pack_pinned", lambda modules: (packed.append(list(modules)), {"packed_gb": 1e-7, "chunks": 1})[1])
    monkeypatch.setattr(memory, "keep_unstreamed_groups_resident", lambda module, device: 0.25 if module is lin else 1 / 0)
    monkeypatch.setattr(memory, "use_registering_pinned_allocator", lambda: "cudaHostRegister, 8 threads")
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: (calls.append(("to", self, *a)), self)[1])
    seen = []  # the weight GB apply_memory_mode asked about
    real = memory.pin_up_front
    monkeypatch.setattr(memory, "pin_up_front", lambda gb, avail, passes=None, registered=False: (seen.append((gb, registered)), real(gb, avail, passes=passes, registered=registered))[1])
    few = memory.PIN_UP_FRONT_MIN_PASSES_REGISTERED - 1
    for available, passes, up_front in ((1000.0, None, True), (1e-9, None, False), (1000.0, few, False), (1000.0, few + 1, True)):
        calls.clear()
        placed.clear()
        packed.clear()
        monkeypatch.setattr(memory, "host_available_gb", lambda: available)
        info = memory.apply_memory_mode(pipe, "lowvram", torch.device("cuda"), passes=passes)  # placement only: no CUDA call
        assert placed[lin]["offload_type"] == "block_level" and placed[lin]["num_blocks_per_group"] == 1
        assert placed[clip]["offload_type"] == "leaf_level" and vae not in placed  # encoders by layer, the VAE not offloaded
        assert all(kw["low_cpu_mem_usage"] is True and kw["use_stream"] is True and kw["record_stream"] is True for kw in placed.values())
        assert calls == [("to", vae, torch.device("cuda")), "tiling"]  # the VAE stays on the GPU
        assert info["resident"] == ["vae"] and info["leaf_level"] == ["image_encoder"] and info["resident_leftovers_gb"] == 0.25
        assert info["pinned_allocator"].startswith("cudaHostRegister")
        assert info["pinning"].startswith("pinned up front" if up_front else "pinned a group at a time")
        # only the transformer is packed: the encoders run once, the VAE is resident
        assert packed == ([[lin]] if up_front else []) and ("packed" in info) is up_front
        assert seen[-1] == (memory.module_bytes(lin) / memory.GB, True)
    info = memory.apply_memory_mode(pipe, "lowvram", torch.device("cuda"), vae_tiling=False)
    assert calls[-1] == "no tiling" and info["vae_tiling"] is False and info["placement_s"] >= 0.0
    info = memory.apply_memory_mode(pipe, "lowvram", torch.device("cuda"))  # lowvram's default: tiled
    assert calls[-1] == "tiling" and info["vae_tiling"] is True
    assert memory.pin_up_front(49.1, 1000.0, passes=few + 1, registered=True)[0] is True  # the faster allocator repays sooner
    assert memory.pin_up_front(49.1, 1000.0, passes=few + 1, registered=False)[0] is False


def test_pack_pinned_moves_every_weight_into_chunks_keeping_values_sharing_and_strides():
    """pack_pinned points every parameter and buffer at a copy inside chunks (storages aligned, shared storages
    shared, strides and offsets kept, an oversize storage in a chunk of its own)."""
    from matrix_world.generation import memory

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 300))
    net[1].register_buffer("table", torch.randn(4, 5, generator=g).t())  # a non-contiguous buffer (a transpose)
    net.half()  # mixed element sizes: fp16 here, float64 below
    other = torch.nn.Linear(6, 8).double()
    other.weight = torch.nn.Parameter(net[0].weight.detach().t())  # a parameter sharing another module's storage
    before = {id(t): (t.detach().clone(), t.stride(), t.dtype) for m in (net, other) for t in (*m.parameters(), *m.buffers())}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for m in (net, other) for t in (*m.parameters(), *m.buffers())}
    chunk_bytes = 4096  # net[2].weight: 300 x 6 fp16 = 3600 B fits; with the rest it needs a second chunk
    info = memory.pack_pinned([net, other], chunk_bytes=chunk_bytes, pin=False)
    tensors = [t for m in (net, other) for t in (*m.parameters(), *m.buffers())]
    for t in tensors:
        ref, stride, dtype = before[id(t)]
        torch.testing.assert_close(t.detach(), ref, rtol=0, atol=0)
        assert t.stride() == stride and t.dtype == dtype and t.untyped_storage().nbytes() >= chunk_bytes
        assert (t.data_ptr() - t.untyped_storage().data_ptr()) % memory.PIN_ALIGN == 0  # every original started its storage
    assert other.weight.untyped_storage().data_ptr() == net[0].weight.untyped_storage().data_ptr()  # still shared
    assert other.weight.data_ptr() == net[0].weight.data_ptr()
    chunks = {t.untyped_storage().data_ptr() for t in tensors}
    assert info["chunks"] == len(chunks) >= 2  # 8 storages, each at a 512 B boundary, in 4 kB chunks
    assert info["packed_gb"] == round(sum(storages.values()) / memory.GB, 3)  # each storage once
    big = torch.nn.Linear(64, 64)  # weight 16 kB > one chunk: a chunk of its own; the bias in the open chunk
    info = memory.pack_pinned([big], chunk_bytes=chunk_bytes, pin=False)
    assert info["chunks"] == 2 and big.weight.untyped_storage().nbytes() == 64 * 64 * 4
    assert big.bias.untyped_storage().nbytes() == chunk_bytes


def test_keep_unstreamed_groups_resident_keeps_only_the_top_level_leftovers():
    """Block-level group offloading streams the blocks and moves the rest of the model (embedders, head) with
    module.to() both ways; only those leftover groups are made to stay on the onload device."""
    from diffusers.hooks import apply_group_offloading
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    from matrix_world.generation import memory

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(4, 8)  # leftover: 40 floats
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
            self.head = torch.nn.Linear(8, 2)  # leftover: 18 floats
            self.table = torch.nn.Parameter(torch.zeros(6))  # a top-level parameter: leftover

        def forward(self, x):
            x = self.embed(x)
            for b in self.blocks:
                x = b(x)
            return self.head(x) + self.table[:2]

    net = Net()
    x = torch.randn(3, 4)
    ref = net(x)
    apply_group_offloading(net, onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    groups = {name: sub._diffusers_hook.get_hook(_GROUP_OFFLOADING).group for name, sub in net.named_modules()
              if getattr(sub, "_diffusers_hook", None) is not None and sub._diffusers_hook.get_hook(_GROUP_OFFLOADING)}
    for name in ("blocks.0", "blocks.1", "blocks.2"):
        groups[name].stream = object()  # as with use_stream on CUDA: the blocks stream
    target = torch.device("meta")  # any device other than the offload device shows which groups were changed
    kept = memory.keep_unstreamed_groups_resident(net, target)
    assert kept == pytest.approx((40 + 18 + 6) * 4 / memory.GB)
    assert groups[""].offload_device == target
    assert all(groups[f"blocks.{i}"].offload_device == torch.device("cpu") for i in range(3))
    for name in ("blocks.0", "blocks.1", "blocks.2"):
        groups[name].stream = None
    groups[""].offload_device = groups[""].onload_device = torch.device("cpu")
    torch.testing.assert_close(net(x), ref)  # the hooks still run the model


def test_vae_decode_estimates_follow_the_measured_decodes_and_a_wan_vae_tiles_at_vae_tile_px():
    from diffusers import AutoencoderKLWan

    from matrix_world.generation import memory

    # benchmarks/vae.py on the H200 (RESULTS.md 2026-12-04): untiled 11.23 / 24.98 GB, 384:320 tiles 3.63 / 4.59 GB
    assert memory.vae_decode_gb(480, 960, 81) == pytest.approx(11.23, abs=0.1)
    assert memory.vae_decode_gb(720, 1440, 81) == pytest.approx(24.98, rel=0.02)
    assert memory.vae_decode_gb(480, 960, 81, tiled=True) == pytest.approx(3.63, abs=0.02)
    assert memory.vae_decode_gb(720, 1440, 81, tiled=True) == pytest.approx(4.59, abs=0.02)

    vae = AutoencoderKLWan(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    memory.set_vae_tiling(vae, True)
    size, stride = memory.VAE_TILE_PX
    assert vae.use_tiling is True
    assert (vae.tile_sample_min_height, vae.tile_sample_min_width) == (size, size)
    assert (vae.tile_sample_stride_height, vae.tile_sample_stride_width) == (stride, stride)
    memory.set_vae_tiling(vae, False)
    assert vae.use_tiling is False


def test_the_seam_aware_decode_tiles_to_the_untiled_shape_and_close_to_its_values(monkeypatch):
    """decode_latents (wrapped latent columns) through a tiled Wan VAE: the same [B, 3, F, H, W] in [0, 1] as
    untiled, close in value (the tiles see less context: the decoder's mid-block attention is per tile), and
    tiling was on (the values differ)."""
    from diffusers import AutoencoderKLWan

    from matrix_world.generation import memory
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    pipe = PanoVideoPipeline(tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None,
                             transformer=None, vae=vae, scheduler=None)
    z = torch.randn(1, 16, 2, 4, 12)  # [B, 16, T, h, w] -> 5 frames of 32 x 96 px
    memory.set_vae_tiling(vae, False)
    ref = pipe.decode_latents(z, seam="wrap")
    monkeypatch.setattr(memory, "VAE_TILE_PX", (32, 24))  # tiles of this tiny size: two or more across
    memory.set_vae_tiling(vae, True)
    assert vae.tile_sample_min_width == 32 and vae.tile_sample_stride_width == 24
    tiled = pipe.decode_latents(z, seam="wrap")
    assert tiled.shape == ref.shape == (1, 3, 5, 32, 96)
    assert tiled.min() >= 0.0 and tiled.max() <= 1.0
    diff = (tiled - ref).abs()
    assert 1e-4 < diff.mean().item() < 0.05, diff.mean().item()


def test_oracle_with_a_real_synthetic_scene_reproduces_the_panorama_at_frame_0():
    procedural = pytest.importorskip("matrix_world.datasets.procedural")
    from matrix_world.datasets import synthetic_backends  # noqa: F401  (registers oracle)
    from matrix_world.generation.video import VideoConfig, generate_video

    prompt = "a snowy forest at dusk"
    pano, _distance, _sky, _scene = procedural.procedural_panorama(prompt, 32, seed=0, backend="cpu")
    frames = 5
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    c2w[:, 2, 3] = np.linspace(0, 0.5, frames)
    scaffold = np.zeros((frames, 32, 64, 3), np.float32)
    scaffold[0] = pano
    mask = np.zeros((frames, 32, 64), bool)
    mask[0] = True
    res = generate_video(VideoConfig(backend="oracle", height=32, seed=0), scaffold_rgb=scaffold, scaffold_mask=mask, prompt=prompt, c2w=c2w)
    assert np.array_equal(res.frames[0], pano)  # the scene rebuilt from (prompt, seed), seen from its start camera
    assert np.abs(res.frames[-1] - pano).mean() > 1e-3  # the camera moved
