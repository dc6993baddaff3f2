"""Seam-aware decoding and rolls (generation/seamless.py) on a toy convolutional decoder."""

import math

import numpy as np
import pytest
import torch

from matrix_world.generation.seamless import (
    blended_decode,
    circular_pad,
    late_roll_steps,
    late_step_rolls,
    roll_latents,
    seam_score,
    wrap_decode,
)


class ToyDecoder(torch.nn.Module):
    """Upsample x4 + zero-padded convolutions: like a VAE decoder, blind to the wrap-around."""

    def __init__(self, channels: int, video: bool = False):
        super().__init__()
        torch.manual_seed(0)
        conv = torch.nn.Conv3d if video else torch.nn.Conv2d
        self.video = video
        self.c1 = conv(channels, 8, 3, padding=1)
        self.c2 = conv(8, 3, 3, padding=1)

    def forward(self, z):
        scale = (1, 4, 4) if self.video else (4, 4)
        x = torch.nn.functional.interpolate(z, scale_factor=scale, mode="nearest")
        return self.c2(torch.tanh(self.c1(x)))


def smooth_periodic_latent(shape, generator):
    """A latent whose columns are smooth and periodic in width (a true panorama latent)."""
    w = shape[-1]
    x = torch.arange(w, dtype=torch.float32) / w * 2 * math.pi
    out = torch.zeros(shape)
    for k in (1, 2, 3):
        a = torch.randn(*shape[:-1], 1, generator=generator)
        b = torch.randn(*shape[:-1], 1, generator=generator)
        out += a * torch.cos(k * x) + b * torch.sin(k * x)
    return out


def test_roll_and_pad_are_circular():
    z = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    assert torch.equal(roll_latents(roll_latents(z, 4), -4), z)
    assert torch.equal(roll_latents(z, 1)[..., 1:], z[..., :-1])
    padded = circular_pad(z, 2)
    assert padded.shape[-1] == 10
    assert torch.equal(padded[..., :2], z[..., -2:]) and torch.equal(padded[..., -2:], z[..., :2])
    video = torch.randn(1, 2, 3, 4, 6)
    assert torch.equal(roll_latents(video, 6), video)


def test_seam_score_values():
    # a periodic triangle wave: every neighbour step, the wrap-around one included, is 1 -> 1
    w = 16
    img = torch.tensor([min(j, w - j) for j in range(w)], dtype=torch.float32).expand(3, 4, w)
    assert seam_score(img) == pytest.approx(1.0, rel=1e-9)
    # a linear ramp 0..1: seam jump = (w-1) interior steps
    ramp = torch.linspace(0, 1, w).expand(3, 4, w)
    assert seam_score(ramp) == pytest.approx(w - 1, rel=1e-6)
    # numpy channels-last
    assert seam_score(ramp.permute(1, 2, 0).numpy(), width_dim=-2) == pytest.approx(w - 1, rel=1e-6)


@pytest.mark.parametrize("video", [False, True])
def test_wrap_and_blended_decode_remove_the_seam(video):
    g = torch.Generator().manual_seed(1)
    shape = (1, 4, 3, 6, 16) if video else (1, 4, 6, 16)
    z = smooth_periodic_latent(shape, g)
    dec = ToyDecoder(4, video=video).eval()
    with torch.no_grad():
        plain = dec(z)
        wrapped = wrap_decode(dec, z, pad_cols=2)
        blended = blended_decode(dec, z)
    assert wrapped.shape == plain.shape == blended.shape
    # the truly seamless reference: decode three tiled copies and keep the middle one
    w = z.shape[-1]
    with torch.no_grad():
        ref = dec(torch.cat((z, z, z), dim=-1))[..., 4 * w : 8 * w]
    s_plain, s_wrap, s_blend, s_ref = (seam_score(x) for x in (plain, wrapped, blended, ref))
    assert s_plain > 2.0 * s_ref, (s_plain, s_ref)
    assert s_wrap == pytest.approx(s_ref, rel=1e-4)
    assert s_blend == pytest.approx(s_ref, rel=0.15)
    # the decoder sees 2 px around each pixel: with 2 latent columns (8 px) of wrap the result is exact
    assert torch.allclose(wrapped, ref, atol=1e-5)
    assert (blended - ref).abs().max() < 0.1 * (plain - ref).abs().max()
    # away from the seam, wrap decode equals the plain decode
    assert torch.allclose(wrapped[..., 16:-16], plain[..., 16:-16], atol=1e-6)
    # wrapped decoding of a rolled latent = rolled wrapped decoding (no preferred seam)
    with torch.no_grad():
        rolled = wrap_decode(dec, roll_latents(z, 5), pad_cols=2)
    assert torch.allclose(rolled, torch.roll(wrapped, 20, dims=-1), atol=1e-5)


def test_wrap_decode_of_constant_is_constant():
    z = torch.ones(1, 4, 5, 12)
    dec = ToyDecoder(4).eval()
    with torch.no_grad():
        out = wrap_decode(dec, z, pad_cols=3)
        ref = dec(torch.ones(1, 4, 5, 40))[..., 40:88]  # far from any zero-padded border
    assert torch.allclose(out[..., :, 8:-8, :], ref[..., :, 8:-8, :], atol=1e-6)


class RecordingDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, hidden_states, timestep):
        self.inputs.append(hidden_states.clone())
        return (hidden_states * 2.0,)


def test_late_step_rolls_roll_input_and_unroll_output():
    assert late_roll_steps(10, 0.4) == 6 and late_roll_steps(10, 0.0) == 10 and late_roll_steps(10, 1.0) == 0
    den = RecordingDenoiser()
    x = torch.randn(1, 2, 3, 8)
    g = torch.Generator().manual_seed(0)
    with late_step_rolls(den, num_steps=4, late_fraction=0.5, width=8, generator=g) as shifts:
        outs = []
        for t in (1.0, 0.75, 0.5, 0.5, 0.25):  # the repeated 0.5 is a CFG call of the same step
            outs.append(den(hidden_states=x, timestep=torch.tensor([t]))[0])
    assert len(shifts) == 4 and shifts[:2] == [0, 0]
    for out in outs:  # output always in the caller's frame
        assert torch.equal(out, x * 2.0)
    assert torch.equal(den.inputs[0], x)
    assert torch.equal(den.inputs[2], torch.roll(x, shifts[2], dims=-1))
    assert torch.equal(den.inputs[3], den.inputs[2])  # same shift for both CFG calls
    # hooks removed afterwards
    den.inputs.clear()
    den(hidden_states=x, timestep=torch.tensor([0.1]))
    assert torch.equal(den.inputs[0], x)


def test_seam_score_rejects_tiny_width():
    with pytest.raises(ValueError):
        seam_score(np.zeros((2, 2)))
