"""Prompt -> synthetic scene, for the offline ``procedural`` panorama / depth / video backends.

THIS IS A PREVIEW, NOT TEXT UNDERSTANDING: the prompt's keywords pick a scene kind and
palette modifiers (``styles.style_for_prompt``; the rules are in :mod:`styles`), the seed
picks the layout. Nothing else of the prompt is used.
"""

from __future__ import annotations

from matrix_world.datasets.scenes import Scene, make_scene
from matrix_world.datasets.styles import match_prompt, style_for_prompt  # noqa: F401  (match_prompt: re-exported)
from matrix_world.errors import InputError


def scene_from_prompt(prompt: str, seed: int = 0) -> Scene:
    """A deterministic scene for a prompt (keywords -> kind and palette; seed -> layout)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty; expected a text such as 'a snowy forest at sunset'")
    return make_scene(style_for_prompt(prompt, seed), seed)


def procedural_panorama(prompt: str, height: int, seed: int = 0, *, backend: str = "auto"):
    """Render the prompt's synthetic scene from its start point.

    The camera stands at the scene origin (kept free of objects), ``scene.camera_height``
    above the ground, looking along +z. Returns (rgb [H, 2H, 3] float32 in [0, 1],
    distance [H, 2H] float32 in metres along each ray, sky [H, 2H] bool, scene).
    """
    scene = scene_from_prompt(prompt, seed)
    rgb, distance, sky = scene.render(scene.camera_c2w(0.0, 0.0)[None], height, backend=backend)
    return rgb[0], distance[0], sky[0], scene


_NAMES = {"pine": "pine trees", "tree": "trees", "palm": "palm trees", "rock": "rocks", "building": "buildings",
          "house": "houses", "wall": "stone walls", "fence": "fences", "cactus": "cacti", "crate": "shipping containers",
          "table": "tables", "desk": "desks", "cabinet": "cabinets", "shelf": "shelves", "sofa": "a sofa", "bed": "a bed",
          "plinth": "sculptures on plinths"}


def describe(scene: Scene) -> str:
    """A short text description of a scene, used as the clip's prompt."""
    counts: dict[str, int] = {}
    for o in scene.objects:
        counts[o.kind] = counts.get(o.kind, 0) + 1
    things = [_NAMES.get(k, k) for k, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:3]
    listed = ", ".join(things[:-1]) + (" and " if len(things) > 1 else "") + things[-1] if things else "nothing in it"
    if scene.indoor:
        return f"a panoramic view inside a {scene.kind if scene.kind != 'room' else 'living room'} with {listed}"
    place = {"city": "a city street", "town": "a small town", "harbour": "a harbour by the sea", "beach": "a sandy beach",
             "desert": "a desert", "snow": "a snowy landscape", "forest": "a forest", "park": "a park",
             "ruins": "ancient ruins"}.get(scene.kind, f"a {scene.kind}")
    return f"a panoramic view of {place} with {listed}"
