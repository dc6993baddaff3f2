"""Photo -> panorama (generation/image2pano.py) with a tiny random FLUX-Fill saved and reloaded offline."""

import math
from dataclasses import replace

import numpy as np
import pytest

from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError
from matrix_world.generation.image2pano import DEFAULT_FOV, keep_mask, place_photo, prepare_fill_inputs
from matrix_world.generation.panorama import PanoramaConfig, generate_panorama, load_flux_pipeline

from tiny_flux import build_tiny_flux


H = 32


@pytest.fixture(scope="module")
def fill_config(tmp_path_factory):
    folder = build_tiny_flux(tmp_path_factory.mktemp("tiny_flux_fill"), fill=True)
    return PanoramaConfig(backend="flux-fill", model=str(folder), height=H, steps=2, roll_fraction=0.5,
                          max_sequence_length=16, fov=90.0, mask_erode=1, blend_width=2, fov_model=None)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return rng.random((24, 32, 3)).astype(np.float32)


def test_place_photo_geometry():
    # a photo whose left half is black and right half white, FOV 90: the centre column of the
    # panorama is the photo's centre, and it spans 90 degrees of longitude at the equator
    photo = np.zeros((60, 80, 3), np.float32)
    photo[:, 40:] = 1.0
    placed, coverage = place_photo(photo, 90.0, 64)
    width = 128
    row = coverage[32]
    assert abs(row.sum() - width * 90 / 360) <= 2
    assert placed[32, width // 2 + 2].min() == pytest.approx(1.0) and placed[32, width // 2 - 3].max() == pytest.approx(0.0)
    # vertical extent: atan((h/2) / f) with f from the horizontal FOV
    f = 40 / math.tan(math.radians(45))
    half_v = math.degrees(math.atan(30 / f))
    col = coverage[:, width // 2]
    assert abs(col.sum() - 64 * 2 * half_v / 180) <= 2
    assert not coverage[:, : width // 4 - 2].any() and not coverage[:, -width // 4 + 2 :].any()
    # the footprint lies where the directions are within the frustum
    dirs = equirect_directions(64).numpy()
    inside = (dirs[..., 2] > 0) & (np.abs(dirs[..., 0] / np.maximum(dirs[..., 2], 1e-9)) < 0.98) & (np.abs(dirs[..., 1] / np.maximum(dirs[..., 2], 1e-9)) < 0.73)
    assert coverage[inside].all()


def test_keep_mask_erodes():
    cov = np.zeros((10, 20), bool)
    cov[2:8, 5:15] = True
    keep = keep_mask(cov, 1)
    assert keep.sum() == 4 * 8 and keep[3:7, 6:14].all()
    assert np.array_equal(keep_mask(cov, 0), cov)
    with pytest.raises(InputError):
        keep_mask(cov, -1)


def test_image_to_panorama_keeps_the_photo_bit_exact(fill_config, photo):
    result = generate_panorama(fill_config, prompt="", image=photo, device="cpu")  # empty prompt is allowed here
    rgb = result.rgb
    assert rgb.shape == (H, 2 * H, 3) and rgb.dtype == np.float32 and 0 <= rgb.min() and rgb.max() <= 1
    inputs = prepare_fill_inputs(photo, fill_config, 90.0)
    keep = result.mask
    assert keep is not None and np.array_equal(keep, inputs["keep"]) and 20 < keep.sum() < 0.5 * keep.size
    assert np.array_equal(rgb[keep], inputs["placed"][keep])  # bit-exact
    outside = ~inputs["coverage"]
    assert np.abs(rgb[outside] - 0.0).mean() > 0.05  # generated, not the black canvas
    info = result.info
    assert info["backend"] == "flux-fill" and info["fov"] == 90.0 and info["fov_source"] == "given"
    assert info["guidance"] == 30.0 and info["prompt"] == ""


def test_fov_default_and_prompt_template(fill_config, photo, tmp_path):
    pipe, _ = load_flux_pipeline(fill_config, "cpu")
    from matrix_world.generation.image2pano import image_to_panorama
    from matrix_world.io import write_image

    path = tmp_path / "photo.png"
    write_image(path, photo)
    result = image_to_panorama(replace(fill_config, fov=None), image=str(path), prompt="a beach", device="cpu", pipe=pipe)
    assert result.info["fov"] == DEFAULT_FOV and result.info["fov_source"] == "default"
    assert result.info["prompt"].startswith("A high quality 360 panorama photo of a beach")
    quantized = (np.round(photo * 255) / 255).astype(np.float32)  # what the PNG holds
    placed = prepare_fill_inputs(quantized, replace(fill_config, fov=None), DEFAULT_FOV)["placed"]
    assert np.array_equal(result.rgb[result.mask], placed[result.mask])


def test_fov_from_a_tiny_moge(fill_config, photo, tmp_path):
    from tiny_moge import build_tiny_moge
    from matrix_world.generation.image2pano import estimate_photo_fov

    ckpt = build_tiny_moge(tmp_path / "moge" / "model.pt", version=1)
    fov, source = estimate_photo_fov(photo, replace(fill_config, fov=None, fov_model=str(ckpt)), "cpu")
    assert source in ("moge", "default (MoGe estimate failed)")
    assert 10.0 <= fov <= 170.0


def test_bad_inputs(fill_config, photo, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError, match="decode"):
        generate_panorama(fill_config, prompt="a room", image=str(notes))
    with pytest.raises(InputError, match="RGB image"):
        generate_panorama(fill_config, prompt="a room", image=np.zeros((8, 8), np.float32))
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        generate_panorama(fill_config, prompt="a room", image=photo * 300)
    with pytest.raises(InputError, match="at least 16"):
        generate_panorama(fill_config, prompt="a room", image=photo[:8])
    with pytest.raises(InputError, match="FOV"):
        generate_panorama(replace(fill_config, fov=179.0), prompt="a room", image=photo)
    with pytest.raises(InputError, match="above the limit"):
        generate_panorama(replace(fill_config, height=1280), prompt="a room", image=photo)
    with pytest.raises(InputError, match="needs an input photo"):
        generate_panorama(fill_config, prompt="a room")
    with pytest.raises(InputError, match="negative prompts"):
        generate_panorama(replace(fill_config, negative_prompt="blurry", true_cfg_scale=2.0), prompt="a", image=photo)
