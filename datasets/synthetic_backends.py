"""The synthetic backends, registered into the stage registries from here.

Production code (``generation/``, ``reconstruction/``) never imports the synthetic scenes;
the pipeline imports this module, which adds:

* panorama ``procedural``: a seeded synthetic scene chosen from the prompt's keywords,
  rendered as a panorama (a preview of the pipeline, not text understanding);
* depth ``procedural``: the exact distance of that scene (same prompt, seed and size;
  checked against the given RGB);
* video ``oracle``: the scene rendered along the trajectory (ground truth; benchmarks).

Importing the module registers them (idempotent: a second import does nothing).
"""

from __future__ import annotations

import numpy as np
import torch

from matrix_world.datasets.procedural import procedural_panorama, scene_from_prompt
from matrix_world.errors import InputError
from matrix_world.generation.depth import DepthConfig, DepthResult, fill_invalid, register_depth_backend
from matrix_world.generation.panorama import PanoramaConfig, PanoramaResult, register_panorama_backend
from matrix_world.generation.seamless import seam_score
from matrix_world.generation.video import VideoConfig, VideoResult, register_video_backend


@register_panorama_backend("procedural")
def procedural_panorama_backend(config: PanoramaConfig, *, prompt, image, device, generator) -> PanoramaResult:
    """Panorama backend ``procedural``: rgb [H, 2H, 3] float32 of the prompt's synthetic scene."""
    if image is not None:
        raise InputError("backend 'procedural' makes a panorama from a prompt; it takes no image")
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be text, got {type(prompt).__name__}")
    height = int(config.height)
    if height < 8 or height > 4096:
        raise InputError(f"procedural panorama height must be in [8, 4096], got {height}")
    rgb, _distance, _sky, scene = procedural_panorama(prompt or "", height, int(config.seed))
    rgb = np.asarray(rgb, dtype=np.float32)
    return PanoramaResult(rgb, {"backend": "procedural", "prompt": prompt or "", "seed": int(config.seed), "height": height,
                                "width": 2 * height, "scene_kind": getattr(scene, "kind", None),
                                "seam_score": round(seam_score(rgb, width_dim=-2), 4)})


@register_depth_backend("procedural")
def procedural_depth_backend(rgb: np.ndarray, config: DepthConfig, *, device) -> DepthResult:
    """Depth backend ``procedural``: the exact distance behind a procedural panorama."""
    h = rgb.shape[0]
    ref_rgb, distance, sky, _ = procedural_panorama(config.prompt or "", h, int(config.seed))
    if np.abs(np.asarray(ref_rgb, np.float32) - rgb).mean() > 2.0 / 255.0:
        raise InputError("procedural depth: the panorama is not the procedural one for this prompt/seed/size "
                         "(set DepthConfig.prompt and seed to those of the procedural panorama)")
    sky = np.asarray(sky, bool)
    distance = np.asarray(distance, np.float32)
    valid = ~sky & np.isfinite(distance) & (distance > 0)
    out = fill_invalid(np.where(valid, distance, 0.0), valid, config.sky_factor)
    return DepthResult(out, valid, sky, {"backend": "procedural", "units": "metres (synthetic ground truth)",
                                          "prompt": config.prompt or "", "seed": int(config.seed)})


@register_video_backend("oracle")
def oracle_video_backend(config: VideoConfig, rgb, mask, c2w, *, prompt: str, scene=None, yaw: float = 0.0,
                         **_) -> VideoResult:
    """Video backend ``oracle``: the synthetic scene rendered along the trajectory.

    The trajectory's world is the frame-0 camera: the scene's start camera (where the
    procedural panorama was rendered) turned right by the trajectory's yaw
    (``scene.camera_c2w(0, 0, yaw)``), so frame 0 reproduces the (turned) panorama.
    rgb [F, H, W, 3], c2w [F, 4, 4] -> frames [F, H, W, 3] float32.
    """
    if scene is None:
        scene = scene_from_prompt(prompt, seed=config.seed)
    if hasattr(scene, "camera_c2w"):
        start = scene.camera_c2w(0.0, 0.0, yaw_deg=yaw)
    else:
        from matrix_world.cameras import make_pose, rotation_yaw

        start = make_pose(rotation_yaw(yaw), torch.zeros(3, dtype=torch.float64))
    world_c2w = torch.as_tensor(start, dtype=torch.float64) @ torch.from_numpy(c2w)
    frames, _distance, _sky = scene.render(world_c2w, rgb.shape[1], backend="auto")
    frames = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.float32)
    return VideoResult(frames, {"scene_kind": getattr(scene, "kind", None), "scene_seed": getattr(scene, "seed", None),
                                "yaw_deg": yaw})
