"""Scene styles: what each scene kind looks like, and which style a prompt maps to.

A :class:`SceneStyle` is the palette, layout and object mix of a scene kind; ``STYLES``
holds the built-in kinds (``KINDS``), which :func:`scenes.make_scene` builds into meshes.

Prompts (``style_for_prompt``, used by ``make_scene`` and by the ``procedural`` backends):
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

# --------------------------------------------------------------------------- styles


@dataclass(frozen=True)
class SceneStyle:
    """What a scene kind looks like: palette, layout and object mix (all colours RGB in [0, 1])."""

    name: str
    indoor: bool = False
    sky_zenith: tuple = (0.25, 0.45, 0.85)
    sky_horizon: tuple = (0.75, 0.85, 0.95)
    sun_elevation: float = 45.0  # degrees
    clouds: float = 0.35
    ground_a: tuple = (0.30, 0.45, 0.20)
    ground_b: tuple = (0.40, 0.35, 0.22)
    ground_pattern: str = "noise"  # noise | paving
    water: tuple | None = None  # colour of a sea beyond the shoreline z > shore
    skyline: tuple | None = (0.35, 0.42, 0.38)  # colour of a distant mountain ring, None = none
    skyline_height: float = 18.0
    mix: tuple = (("tree", 1.0),)  # (object kind, weight) around the walkable square
    inner_mix: tuple | None = None  # (object kind, weight) inside it (None -> mix; no buildings/houses there)
    inner_count: int = 10  # obstacles inside the walkable square
    outer_count: int = 40  # objects around it
    # indoor only
    floor: str = "planks"  # planks | tiles | carpet
    floor_a: tuple = (0.55, 0.38, 0.22)
    floor_b: tuple = (0.45, 0.30, 0.18)
    wall: tuple = (0.85, 0.82, 0.75)
    ceiling: tuple = (0.92, 0.92, 0.90)
    room_size: tuple[float, float] = (7.0, 12.0)  # min/max side in metres
    room_height: tuple[float, float] = (2.7, 3.3)


STYLES: dict[str, SceneStyle] = {
    s.name: s
    for s in [
        SceneStyle("forest", mix=(("pine", 3.0), ("tree", 2.0), ("rock", 1.0)), inner_count=24, outer_count=90,
                   ground_a=(0.22, 0.38, 0.14), ground_b=(0.36, 0.30, 0.16)),
        SceneStyle("park", mix=(("tree", 3.0), ("fence", 1.0), ("rock", 0.5), ("wall", 0.3)), inner_count=14,
                   outer_count=50, ground_a=(0.35, 0.55, 0.22), ground_b=(0.28, 0.45, 0.18)),
        SceneStyle("city", mix=(("building", 1.0),), inner_mix=(("tree", 1.0), ("crate", 0.5), ("wall", 0.5)),
                   inner_count=10, outer_count=36, ground_pattern="paving",
                   ground_a=(0.42, 0.42, 0.44), ground_b=(0.30, 0.30, 0.32), skyline=None, clouds=0.2),
        SceneStyle("town", mix=(("house", 3.0), ("tree", 1.5), ("fence", 1.0), ("wall", 0.5)), inner_count=12,
                   inner_mix=(("tree", 1.0), ("fence", 1.0), ("wall", 0.5)),
                   outer_count=45, ground_a=(0.38, 0.50, 0.25), ground_b=(0.50, 0.45, 0.35)),
        SceneStyle("beach", mix=(("palm", 2.0), ("rock", 1.0)), inner_count=10, outer_count=25,
                   ground_a=(0.86, 0.78, 0.58), ground_b=(0.78, 0.68, 0.48), water=(0.10, 0.40, 0.60),
                   sky_zenith=(0.15, 0.45, 0.90), skyline=(0.45, 0.55, 0.45), skyline_height=10.0),
        SceneStyle("desert", mix=(("rock", 2.0), ("cactus", 1.5)), inner_count=12, outer_count=30,
                   ground_a=(0.85, 0.62, 0.38), ground_b=(0.72, 0.50, 0.30), sky_horizon=(0.90, 0.85, 0.75),
                   clouds=0.05, skyline=(0.70, 0.45, 0.30), skyline_height=25.0),
        SceneStyle("snow", mix=(("pine", 3.0), ("rock", 1.0)), inner_count=16, outer_count=70,
                   ground_a=(0.92, 0.93, 0.96), ground_b=(0.80, 0.83, 0.90), sky_zenith=(0.55, 0.65, 0.80),
                   sky_horizon=(0.88, 0.90, 0.93), clouds=0.6, skyline=(0.85, 0.87, 0.92), skyline_height=35.0),
        SceneStyle("harbour", mix=(("crate", 2.0), ("building", 1.0), ("wall", 0.5)), inner_count=10,
                   inner_mix=(("crate", 2.0), ("wall", 0.5)),
                   outer_count=25, ground_pattern="paving", ground_a=(0.50, 0.48, 0.45), ground_b=(0.40, 0.38, 0.36),
                   water=(0.08, 0.30, 0.45), skyline=(0.40, 0.45, 0.50), skyline_height=12.0),
        SceneStyle("ruins", mix=(("wall", 2.0), ("rock", 1.5), ("tree", 0.5)), inner_count=14, outer_count=40,
                   ground_a=(0.55, 0.52, 0.40), ground_b=(0.42, 0.45, 0.30)),
        SceneStyle("room", indoor=True, mix=(("table", 2.0), ("cabinet", 2.0), ("sofa", 1.0), ("shelf", 1.0)),
                   inner_count=7),
        SceneStyle("office", indoor=True, mix=(("desk", 3.0), ("cabinet", 1.0), ("shelf", 1.0)), inner_count=8,
                   floor="carpet", floor_a=(0.35, 0.38, 0.42), floor_b=(0.30, 0.32, 0.36), wall=(0.90, 0.90, 0.88),
                   room_size=(9.0, 14.0)),
        SceneStyle("bedroom", indoor=True, mix=(("bed", 1.0), ("cabinet", 2.0), ("table", 1.0)), inner_count=5,
                   floor_a=(0.62, 0.45, 0.28), floor_b=(0.55, 0.40, 0.25), wall=(0.80, 0.85, 0.90),
                   room_size=(6.0, 9.0)),
        SceneStyle("kitchen", indoor=True, mix=(("cabinet", 3.0), ("table", 1.0)), inner_count=6, floor="tiles",
                   floor_a=(0.85, 0.85, 0.82), floor_b=(0.25, 0.25, 0.28), wall=(0.95, 0.92, 0.80),
                   room_size=(6.0, 10.0)),
        SceneStyle("hall", indoor=True, mix=(("plinth", 3.0), ("shelf", 1.0)), inner_count=10, floor="tiles",
                   floor_a=(0.80, 0.78, 0.72), floor_b=(0.60, 0.58, 0.52), wall=(0.88, 0.84, 0.78),
                   room_size=(14.0, 22.0), room_height=(4.0, 6.0)),
    ]
}
KINDS = tuple(STYLES)
OUTDOOR_KINDS = tuple(k for k, s in STYLES.items() if not s.indoor)
INDOOR_KINDS = tuple(k for k, s in STYLES.items() if s.indoor)


# --------------------------------------------------------------------------- prompts


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
