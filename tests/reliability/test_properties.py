"""Property-based tests of the pure functions (hypothesis, derandomised "ci" profile).

Gate arithmetic and budget capping, observation preprocessing and validation, action
scaling and clipping, config parsing and overrides, metadata round trips. Existing
properties (tests/nn/test_gates.py: top-k of positive logits, numpy == torch masks;
tests/test_config.py: dotted overrides) are not repeated here.
"""

from __future__ import annotations

import functools
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swan_policy.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    load_config,
    validate_config,
)
from swan_policy.export.onnx import read_metadata, write_metadata
from swan_policy.nn.encoders import preprocess_pixels
from swan_policy.nn.gates import budget_mask, units_for_budget
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import (
    CheckpointError,
    load_json,
    load_tensors,
    save_json,
    save_tensors,
)
from swan_policy.spec import ArraySpec, ObservationError, ObsSpec
from tests.conftest import random_obs, state_config
from tests.reliability._bundles import linear_bundle

budgets = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)
few = settings(max_examples=25)  # for examples that write files


# --------------------------------------------------------------------------- gates
@given(budget=budgets, n=st.integers(1, 4096))
def test_units_for_budget_is_the_smallest_count_covering_the_budget(budget: float, n: int) -> None:
    """Gate arithmetic (no table row): k = ceil(b*N) covers b*N units (up to float
    noise), and one fewer would not."""
    k = units_for_budget(budget, n)
    assert 1 <= k <= n
    assert k >= budget * n - 1e-6
    assert k == 1 or k - 1 < budget * n


@given(b1=budgets, b2=budgets, n=st.integers(1, 512))
def test_units_for_budget_is_monotone(b1: float, b2: float, n: int) -> None:
    """Gate arithmetic (no table row): a larger budget never allows fewer units."""
    lo, hi = sorted((b1, b2))
    assert units_for_budget(lo, n) <= units_for_budget(hi, n)


@given(bad=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0 + 1e-9), st.just(math.nan)))
def test_units_for_budget_refuses_budgets_outside_0_1(bad: float) -> None:
    """Gate arithmetic: budgets outside (0, 1] (and NaN) are a ValueError naming the rule."""
    with pytest.raises(ValueError, match=r"budget must be in \(0, 1\]"):
        units_for_budget(bad, 8)


unique_rows = st.lists(
    st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=32, unique=True
)


@given(row=unique_rows, b1=budgets, b2=budgets)
def test_budget_masks_nest(row: list[float], b1: float, b2: float) -> None:
    """Budget capping: a unit on at a lower budget is on at every higher one (what
    makes the ladder's levels nest)."""
    s = torch.tensor([row])
    lo, hi = sorted((b1, b2))
    small, large = budget_mask(s, lo), budget_mask(s, hi)
    assert bool((small <= large).all())
    assert torch.equal(budget_mask(s, 1.0), (s > 0).float())  # b = 1 is the free gate


@given(row=unique_rows, budget=budgets, extra=st.integers(0, 64))
def test_budget_refers_to_the_reference_unit_count(
    row: list[float], budget: float, extra: int
) -> None:
    """Budget capping: a compacted layer keeps N_ref; the cap is ceil(b * N_ref),
    whatever is left."""
    s = torch.tensor([row])
    n_ref = len(row) + extra
    on = int(budget_mask(s, budget, n_ref).sum())
    assert on == min(units_for_budget(budget, n_ref), int((s > 0).sum()))


# --------------------------------------------------------------------------- pixels
@given(
    images=hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 6)),
    )
)
def test_preprocess_pixels_is_an_exact_rescaled_nchw_view(images: np.ndarray) -> None:
    """Row 13 (preprocessing): uint8 HWC -> float NCHW in [-0.5, 0.5], nothing lost."""
    x = preprocess_pixels(torch.from_numpy(images))
    b, h, w, c = images.shape
    assert x.shape == (b, c, h, w) and x.dtype == torch.float32 and x.is_contiguous()
    assert float(x.min()) >= -0.5 and float(x.max()) <= 0.5
    back = ((x + 0.5) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(back, images)  # no information lost


@given(
    images=hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 3), st.integers(2, 9), st.integers(2, 9), st.integers(1, 6)),
    ),
    scale=st.sampled_from([2, 3, 4]),
)
def test_image_norm_standardises_and_ignores_brightness(images: np.ndarray, scale: int) -> None:
    """input_norm="image": each channel of each image has mean 0 and std <= 1 (1 unless
    flat), and an image dimmed by an integer factor (exact in uint8) maps to the same
    values up to the std floor."""
    x = preprocess_pixels(torch.from_numpy(images), "image")
    b, h, w, c = images.shape
    assert x.shape == (b, c, h, w) and x.is_contiguous() and torch.isfinite(x).all()
    torch.testing.assert_close(x.mean((2, 3)), torch.zeros(b, c), atol=1e-4, rtol=0)
    std = x.std((2, 3), correction=0)
    assert float(std.max()) <= 1.0 + 1e-4
    wide = torch.from_numpy(images.astype(np.float32)).std((1, 2), correction=0) / 255.0
    big = wide >= 0.1  # well above the 0.01 floor: standardised to ~1
    torch.testing.assert_close(std[big], torch.ones_like(std[big]), atol=0.01, rtol=0)
    bright = images // scale * scale  # so that dimming by `scale` is exact
    dim = bright // scale
    xb = preprocess_pixels(torch.from_numpy(bright), "image")
    xd = preprocess_pixels(torch.from_numpy(dim), "image")
    spread = torch.from_numpy(dim.astype(np.float32)).std((1, 2), correction=0) / 255.0
    ok = spread >= 0.1  # the floor changes the scale by < 0.5% here
    torch.testing.assert_close(xb[ok], xd[ok], atol=1e-4, rtol=0.01)


# --------------------------------------------------------------------------- validation
dims = st.integers(1, 4)
specs = st.dictionaries(
    st.sampled_from(["pixels", "proprio", "depth", "force"]),
    st.tuples(st.lists(dims, min_size=1, max_size=3).map(tuple), st.sampled_from(["uint8", "f"])),
    min_size=1,
    max_size=3,
)


def _valid_obs(spec: dict[str, tuple[tuple[int, ...], str]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (
            rng.integers(0, 256, shape, dtype=np.uint8)
            if kind == "uint8"
            else rng.standard_normal(shape).astype(np.float32 if rng.random() < 0.5 else np.float64)
        )
        for k, (shape, kind) in spec.items()
    }


def _obs_spec(spec: dict[str, tuple[tuple[int, ...], str]]) -> ObsSpec:
    return ObsSpec(
        {
            k: ArraySpec(shape, "uint8" if kind == "uint8" else "float32")
            for k, (shape, kind) in spec.items()
        }
    )


@given(spec=specs, seed=st.integers(0, 2**16))
def test_validate_accepts_valid_obs_and_returns_model_ready_copies(
    spec: dict[str, tuple[tuple[int, ...], str]], seed: int
) -> None:
    """Row 13: any valid observation passes; floats come back as float32 copies, images
    as they are; the caller's arrays are never modified."""
    obs = _valid_obs(spec, seed)
    before = {k: v.copy() for k, v in obs.items()}
    out = _obs_spec(spec).validate(obs)
    assert set(out) == set(obs)
    for k, v in out.items():
        assert v.shape == obs[k].shape
        if obs[k].dtype == np.uint8:
            assert v.dtype == np.uint8 and np.array_equal(v, obs[k])
        else:
            assert v.dtype == np.float32 and not np.shares_memory(v, obs[k])
            np.testing.assert_array_equal(v, obs[k].astype(np.float32))
    for k, v in obs.items():
        assert np.array_equal(v, before[k]) and v.dtype == before[k].dtype


@given(spec=specs, seed=st.integers(0, 2**16), data=st.data())
def test_validate_names_the_key_of_any_single_fault(
    spec: dict[str, tuple[tuple[int, ...], str]], seed: int, data: st.DataObject
) -> None:
    """Row 13: break one entry (shape, dtype, a NaN); the error names that key; no
    mutation."""
    obs = _valid_obs(spec, seed)
    key = data.draw(st.sampled_from(sorted(obs)))
    shape, kind = spec[key]
    faults = ["shape", "dtype"] if kind == "uint8" else ["shape", "dtype", "nan"]
    fault = data.draw(st.sampled_from(faults))
    if fault == "shape":
        obs[key] = np.zeros((*shape, 2), obs[key].dtype)
    elif fault == "dtype":
        obs[key] = obs[key].astype(np.int16 if kind != "uint8" else np.float32)
    else:
        obs[key] = obs[key].copy()
        obs[key].flat[data.draw(st.integers(0, obs[key].size - 1))] = np.nan
    before = {k: v.copy() for k, v in obs.items()}
    with pytest.raises(ObservationError, match=rf"observation\['{key}'\]"):
        _obs_spec(spec).validate(obs)
    for k, v in obs.items():
        np.testing.assert_array_equal(v, before[k])


# --------------------------------------------------------------------------- actions
@functools.cache
def _state_policy(action_dim: int) -> SwanPolicy:
    """One policy per action size (examples reset what they use: the bounds)."""
    torch.manual_seed(0)
    return SwanPolicy(state_config(action_dim=action_dim))


bound_pairs = st.lists(
    st.tuples(st.floats(-100, 100), st.floats(1e-2, 100)), min_size=1, max_size=4
)


@given(bounds=bound_pairs, data=st.data())
def test_unscale_then_normalise_is_the_identity_and_stays_in_bounds(
    bounds: list[tuple[float, float]], data: st.DataObject
) -> None:
    """Row 12 (action scaling): forward() maps tanh outputs in [-1, 1] into [low, high];
    normalize_actions is its inverse (what the BC loss compares) and clips what lies
    outside the bounds."""
    n = len(bounds)
    low = np.array([lo for lo, _ in bounds])
    high = low + np.array([width for _, width in bounds])
    policy = _state_policy(n)
    policy.set_normalization(np.zeros(4), np.ones(4), low, high)
    a = torch.tensor(data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n)))
    a = a.float()[None]

    def drawn(*args: object, **kwargs: object) -> torch.Tensor:
        return a  # the network's output replaced by the drawn value: isolates the scaling

    policy.forward_normalized = drawn  # type: ignore[method-assign]  # a stub, on purpose
    env_units = policy({"proprio": torch.zeros(1, 4)})
    assert bool((env_units >= policy.action_low - 1e-4).all())
    assert bool((env_units <= policy.action_high + 1e-4).all())
    # float32 rounding of the env-unit value, amplified by 2 / (high - low)
    eps = float(np.finfo(np.float32).eps)
    tol = 1e-6 + 4 * eps * (np.abs(low) + np.abs(high)) / (high - low)
    err = (policy.normalize_actions(env_units) - a).abs()[0].numpy()
    assert (err <= tol).all(), (err, tol)
    outside = policy.action_high + data.draw(st.floats(1e-3, 1e6))
    assert torch.equal(policy.normalize_actions(outside[None]), torch.ones(1, n))
    outside = policy.action_low - data.draw(st.floats(1e-3, 1e6))
    assert torch.equal(policy.normalize_actions(outside[None]), -torch.ones(1, n))


@given(seed=st.integers(0, 2**16), budget=budgets)
def test_policy_actions_are_finite_and_within_bounds(seed: int, budget: float) -> None:
    """Row 12: whatever the budget, even for proprio far off its statistics, actions are
    finite and within the bounds."""
    policy = _state_policy(2).eval()
    policy.set_normalization(np.zeros(4), np.ones(4), np.array([-2.0, 0.0]), np.array([2.0, 0.5]))
    obs = random_obs(policy.config, 4, seed=seed)
    obs["proprio"] = obs["proprio"] * 1e3  # far outside the normalisation statistics
    with torch.no_grad():
        a = policy(obs, budget)
    assert bool(torch.isfinite(a).all())
    assert bool((a >= policy.action_low).all() and (a <= policy.action_high).all())


# --------------------------------------------------------------------------- configs
@given(
    seed=st.integers(0, 2**31),
    lr=st.floats(1e-8, 1.0, exclude_min=False),
    steps=st.integers(1, 10**6),
    tau=st.floats(1e-3, 10),
    budgets=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=4),
)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
def test_config_dump_and_reload_round_trips(
    seed: int, lr: float, steps: int, tau: float, budgets: list[float]
) -> None:
    """Row 14 (config parsing): overrides -> validated config -> YAML (what a run
    saves) -> the same config."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text("name: prop\n")
        sets = [
            f"seed={seed}",
            f"bc.lr={lr!r}",
            f"bc.steps={steps}",
            f"policy.gate.tau={tau!r}",
            f"eval.budgets={budgets!r}",
        ]
        cfg = load_config(path, sets)
        assert (cfg.seed, cfg.bc.lr, cfg.bc.steps, cfg.policy.gate.tau) == (seed, lr, steps, tau)
        assert cfg.eval.budgets == budgets
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        assert load_config(path) == cfg


sections = st.sampled_from(["", "policy.", "policy.gate.", "bc.", "eval.", "log.", "rl."])
names = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)


@given(section=sections, name=names, value=st.integers() | st.booleans())
def test_an_unknown_key_is_always_refused_by_its_dotted_name(
    section: str, name: str, value: object
) -> None:
    """Row 14: an unknown key in any section is refused, named by its dotted path."""
    node: Any = ExperimentConfig
    for part in filter(None, section.split(".")):
        node = node.model_fields[part].annotation
    assume(name not in node.model_fields)
    key = section + name
    data = apply_overrides({}, [f"{key}={json.dumps(value)}"])
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": Extra inputs are not"):
        validate_config(data)


# --------------------------------------------------------------------------- files
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@few
@given(value=json_values)
def test_json_round_trip(value: Any) -> None:
    """Row 5: JSON metadata round-trips exactly; the atomic write leaves no temp file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.json"
        save_json(path, value)
        assert load_json(path) == value
        assert [p.name for p in Path(tmp).iterdir()] == ["x.json"]  # no temp file left


tensor_dtypes = st.sampled_from(
    [torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
)


@few
@given(
    shapes=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True),
        st.tuples(st.lists(st.integers(0, 5), max_size=3), tensor_dtypes),
        max_size=5,
    ),
    seed=st.integers(0, 2**16),
)
def test_tensors_round_trip_bit_exact(
    shapes: dict[str, tuple[list[int], torch.dtype]], seed: int
) -> None:
    """Row 5: tensors of any dtype and shape (empty, 0-d) come back bit-identical."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        k: (torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 100).to(dtype)
        for k, (shape, dtype) in shapes.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.safetensors"
        save_tensors(path, tensors, metadata={"k": "v"})
        back = load_tensors(path)
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t)


@few
@given(data=st.data())
def test_any_flipped_data_byte_is_detected(data: st.DataObject) -> None:
    """Row 2 as a property: a flipped bit anywhere in the tensor data never loads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.safetensors"
        save_tensors(path, {"w": torch.arange(24.0).reshape(4, 6), "b": torch.ones(3)})
        blob = bytearray(path.read_bytes())
        start = 8 + int.from_bytes(blob[:8], "little")
        pos = data.draw(st.integers(start, len(blob) - 1))
        blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        path.write_bytes(bytes(blob))
        with pytest.raises(CheckpointError, match="does not match the SHA-256"):
            load_tensors(path)


utf8 = st.characters(codec="utf-8")  # protobuf strings must be valid UTF-8 (no surrogates)


@few
@given(
    props=st.dictionaries(
        st.text(utf8, min_size=1, max_size=12), st.text(utf8, max_size=40), max_size=5
    )
)
def test_onnx_metadata_round_trip(props: dict[str, str]) -> None:
    """Row 15: export's metadata helpers: what is written is what is read (any text)."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = linear_bundle(Path(tmp) / "b", np.ones((2, 1)))
        path = bundle / "level_1.00.onnx"
        write_metadata(path, props)
        assert read_metadata(path) == props
