"""Prompt -> synthetic scene, for the offline ``procedural`` panorama / depth / video backends.

THIS IS A PREVIEW, NOT TEXT UNDERSTANDING. The prompt is lower-cased and split into
words; a fixed keyword table picks a scene kind (forest, city, beach, room, ...) and
palette modifiers (sunset, night, fog, overcast, autumn). The first scene keyword in the
prompt wins. A prompt with no known scene keyword falls back to an outdoor kind chosen by a
hash of the prompt text (so the same prompt always gives the same kind), with its colours
jittered by that hash. The seed then chooses the layout. Nothing else of the prompt is
used: "a red car in front of a castle" gives ruins, with no car.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

import numpy as np
from matrix_world.datasets.scenes import (
    OUTDOOR_KINDS,
    STYLES,
    Scene,
    SceneStyle,
    make_scene,
)

# word -> scene kind (matched on whole words; multi-word keys are matched as phrases)
SCENE_KEYWORDS: dict[str, str] = {
    "forest": "forest", "woods": "forest", "woodland": "forest", "jungle": "forest", "trees": "forest", "pine": "forest",
    "park": "park", "garden": "park", "meadow": "park", "field": "park", "grass": "park", "lawn": "park",
    "city": "city", "street": "city", "downtown": "city", "skyscraper": "city", "skyscrapers": "city", "urban": "city",
    "town": "town", "village": "town", "houses": "town", "suburb": "town", "countryside": "town",
    "beach": "beach", "coast": "beach", "shore": "beach", "island": "beach", "tropical": "beach", "ocean": "beach",
    "sea": "beach", "seaside": "beach",
    "desert": "desert", "dunes": "desert", "canyon": "desert", "sand": "desert", "sahara": "desert",
    "snow": "snow", "snowy": "snow", "winter": "snow", "ice": "snow", "arctic": "snow", "glacier": "snow",
    "harbour": "harbour", "harbor": "harbour", "port": "harbour", "dock": "harbour", "docks": "harbour", "pier": "harbour",
    "ruins": "ruins", "castle": "ruins", "ancient": "ruins", "temple": "ruins",
    "living room": "room", "room": "room", "interior": "room", "indoor": "room", "indoors": "room", "apartment": "room",
    "office": "office", "workspace": "office",
    "bedroom": "bedroom",
    "kitchen": "kitchen",
    "hall": "hall", "museum": "hall", "gallery": "hall", "lobby": "hall",
}

MODIFIER_KEYWORDS: dict[str, str] = {
    "sunset": "sunset", "dusk": "sunset", "evening": "sunset", "sunrise": "sunset", "dawn": "sunset", "golden": "sunset",
    "night": "night", "midnight": "night", "moonlit": "night",
    "fog": "fog", "foggy": "fog", "mist": "fog", "misty": "fog", "haze": "fog",
    "cloudy": "overcast", "overcast": "overcast", "rain": "overcast", "rainy": "overcast", "storm": "overcast",
    "autumn": "autumn", "fall": "autumn",
}


@dataclass(frozen=True)
class PromptMatch:
    """How a prompt was mapped: kind, modifiers, the words that matched, fallback or not."""

    kind: str
    modifiers: tuple[str, ...]
    matched: tuple[str, ...]
    fallback: bool


def _prompt_hash(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.strip().lower().encode("utf-8")).digest()[:8], "little")


def match_prompt(prompt: str) -> PromptMatch:
    """Map a prompt to a scene kind and modifiers by keywords (see the module docstring)."""
    text = " " + " ".join(re.findall(r"[a-z]+", prompt.lower())) + " "
    hits = []
    for key, kind in SCENE_KEYWORDS.items():
        pos = text.find(f" {key} ")
        if pos >= 0:
            hits.append((pos, -len(key), key, kind))
    mods = sorted({m for k, m in MODIFIER_KEYWORDS.items() if f" {k} " in text})
    if hits:
        _, _, key, kind = min(hits)
        return PromptMatch(kind, tuple(mods), (key,) + tuple(k for k in MODIFIER_KEYWORDS if f" {k} " in text), False)
    kind = OUTDOOR_KINDS[_prompt_hash(prompt) % len(OUTDOOR_KINDS)]
    return PromptMatch(kind, tuple(mods), tuple(k for k in MODIFIER_KEYWORDS if f" {k} " in text), True)


def _tint(c, m) -> tuple:
    return tuple(float(x) for x in np.clip(np.asarray(c) * np.asarray(m), 0, 1))


def style_for_prompt(prompt: str, seed: int = 0) -> SceneStyle:
    """The :class:`SceneStyle` a prompt maps to (modifiers applied; fallback colours jittered)."""
    match = match_prompt(prompt)
    style = STYLES[match.kind]
    if match.fallback:
        rng = np.random.default_rng(_prompt_hash(prompt))
        style = dataclasses.replace(
            style, name=f"{style.name}", sky_zenith=_tint(style.sky_zenith, rng.uniform(0.8, 1.2, 3)),
            ground_a=_tint(style.ground_a, rng.uniform(0.8, 1.2, 3)), ground_b=_tint(style.ground_b, rng.uniform(0.8, 1.2, 3)),
            sun_elevation=float(rng.uniform(25, 70)))
    for mod in match.modifiers:
        if style.indoor and mod != "night":
            continue
        if mod == "sunset":
            style = dataclasses.replace(style, sky_zenith=(0.35, 0.35, 0.60), sky_horizon=(0.98, 0.60, 0.30),
                                        sun_elevation=8.0, ground_a=_tint(style.ground_a, (1.1, 0.85, 0.7)),
                                        ground_b=_tint(style.ground_b, (1.1, 0.85, 0.7)))
        elif mod == "night":
            dark = (0.25, 0.25, 0.35)
            style = dataclasses.replace(style, sky_zenith=(0.02, 0.03, 0.08), sky_horizon=(0.08, 0.10, 0.18), clouds=0.1,
                                        ground_a=_tint(style.ground_a, dark), ground_b=_tint(style.ground_b, dark),
                                        wall=_tint(style.wall, (0.5, 0.5, 0.6)), sun_elevation=10.0)
        elif mod == "fog":
            style = dataclasses.replace(style, sky_zenith=(0.80, 0.82, 0.85), sky_horizon=(0.88, 0.88, 0.88), clouds=0.9)
        elif mod == "overcast":
            style = dataclasses.replace(style, sky_zenith=(0.55, 0.58, 0.62), sky_horizon=(0.75, 0.76, 0.78), clouds=0.8)
        elif mod == "autumn":
            style = dataclasses.replace(style, ground_a=_tint(style.ground_a, (2.2, 1.2, 0.6)),
                                        ground_b=_tint(style.ground_b, (1.6, 1.0, 0.6)))
    return style


def scene_from_prompt(prompt: str, seed: int = 0) -> Scene:
    """A deterministic scene for a prompt (keywords -> kind and palette; seed -> layout)."""
    if not isinstance(prompt, str) or not prompt.strip():
        from matrix_world.errors import InputError

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
