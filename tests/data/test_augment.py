from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from swan_policy.data.augment import random_colour_mix, random_shift


@given(pad=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_random_shift_is_an_edge_replicating_translation(pad: int, seed: int) -> None:
    img = torch.arange(2 * 9 * 9 * 3, dtype=torch.int64).reshape(2, 9, 9, 3).to(torch.uint8)
    out = random_shift(img, pad, torch.Generator().manual_seed(seed))
    assert out.shape == img.shape and out.dtype == torch.uint8
    again = random_shift(img, pad, torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)
    if pad == 0:
        assert out is img
        return
    for b in range(2):
        # each output pixel comes from a clamped, shifted source location
        found = False
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                rows = (torch.arange(9) + dy).clamp(0, 8)
                cols = (torch.arange(9) + dx).clamp(0, 8)
                if torch.equal(out[b], img[b][rows][:, cols]):
                    found = True
        assert found


@given(pad=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_random_shift_equals_the_clamped_index_gather_with_the_same_shifts(
    pad: int, seed: int
) -> None:
    # the formulation the pad-and-crop replaced: same RNG draws, same pixels, so runs
    # trained before and after the change see the same augmented batches
    img = torch.randint(0, 256, (5, 12, 10, 3), generator=torch.Generator().manual_seed(seed))
    img = img.to(torch.uint8)
    out = random_shift(img, pad, torch.Generator().manual_seed(seed))
    shifts = torch.randint(-pad, pad + 1, (5, 2), generator=torch.Generator().manual_seed(seed))
    rows = (torch.arange(12)[None, :] + shifts[:, :1]).clamp(0, 11)
    cols = (torch.arange(10)[None, :] + shifts[:, 1:]).clamp(0, 9)
    expected = img[torch.arange(5)[:, None, None], rows[:, :, None], cols[:, None, :]]
    assert torch.equal(out, expected)


def test_random_colour_mix_is_a_per_image_affine_colour_map() -> None:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 8, 8, 6), generator=gen, dtype=torch.uint8)
    out = random_colour_mix(pixels, 0.3, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == pixels.shape
    # the same draws, in the order the function makes them, applied pixel by pixel
    draws = torch.Generator().manual_seed(1)
    mix = torch.eye(3) + (torch.rand(4, 3, 3, generator=draws) * 2 - 1) * 0.3
    tint = (torch.rand(4, 1, 3, generator=draws) - 0.5) * 0.3
    for i in range(4):
        for frame in range(2):  # both stacked frames get the image's one draw
            rgb = pixels[i, :, :, 3 * frame : 3 * frame + 3].double() / 255
            expected = (rgb @ mix[i].double().T + tint[i, 0].double()).clamp(0, 1) * 255
            got = out[i, :, :, 3 * frame : 3 * frame + 3].double()
            assert (got - expected).abs().max() <= 0.5 + 1e-3  # rounding to uint8
    # the images get different maps
    assert not torch.equal(mix[0], mix[1])


def test_random_colour_mix_off_draws_nothing_and_rejects_non_rgb() -> None:
    pixels = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    assert random_colour_mix(pixels, 0.0, gen) is pixels
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())
    with pytest.raises(ValueError, match="multiple of 3"):
        random_colour_mix(torch.zeros(2, 4, 4, 4, dtype=torch.uint8), 0.2)
