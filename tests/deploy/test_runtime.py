"""PolicyRuntime: validation before onnxruntime, scheduling, stats, bad bundles, memory."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import numpy as np
import pytest
import torch

from swan_policy.budget.ladder import level_policy
from swan_policy.deploy import BundleError, ObservationError, PolicyRuntime
from tests.deploy.conftest import one_obs


class _Counting:
    """Wraps an onnxruntime session and counts calls (to prove bad input never reaches it)."""

    def __init__(self, sess) -> None:
        self.sess, self.calls = sess, 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.sess.run(*args, **kwargs)

    def get_outputs(self):
        return self.sess.get_outputs()


def test_act_matches_the_torch_level_model(reach_bundle) -> None:
    path, policy, ladder = reach_bundle
    for level in (1.0, 0.5):
        runtime = PolicyRuntime.load(path, scheduler=f"fixed:{level}")
        obs = one_obs(3)
        action = runtime.act(obs)
        assert action.dtype == np.float32 and action.shape == (2,)
        torch_level = level_policy(policy, ladder, level)
        with torch.no_grad():
            batch = {k: torch.from_numpy(v)[None] for k, v in obs.items()}
            expected = torch_level(batch, 1.0)[0].numpy()
        np.testing.assert_allclose(action, expected, atol=1e-4, rtol=0)
        assert runtime.last_level == level


def _bad(obs: dict, key: str, value) -> dict:
    out = dict(obs)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("key", "make", "message"),
    [
        ("pixels", None, r"missing \['pixels'\]"),
        ("extra", lambda o: np.zeros(3), r"unexpected \['extra'\]"),
        ("pixels", lambda o: o["pixels"][:32], r"observation\['pixels'\]: expected shape"),
        ("pixels", lambda o: o["pixels"].transpose(2, 0, 1).copy(), "looks like CHW"),
        ("pixels", lambda o: o["pixels"].astype(np.float64), "expected dtype uint8, got float64"),
        ("proprio", lambda o: o["proprio"].astype(np.int64), r"observation\['proprio'\].*float"),
        ("proprio", lambda o: np.full(6, np.nan, np.float32), r"'proprio'\]: contains NaN or Inf"),
        ("proprio", lambda o: np.full(6, np.inf), r"'proprio'\]: contains NaN or Inf"),
        ("proprio", lambda o: o["proprio"][None], r"observation\['proprio'\]: expected shape"),
    ],
)
def test_bad_observations_are_refused_before_onnxruntime(reach_bundle, key, make, message) -> None:
    path, _, _ = reach_bundle
    runtime = PolicyRuntime.load(path)
    counters = {b: _Counting(s) for b, s in runtime._sessions.items()}
    runtime._sessions = counters  # type: ignore[assignment]  # a counting stand-in
    good = one_obs(1)
    snapshot = {k: v.copy() for k, v in good.items()}
    bad = _bad(good, key, None if make is None else make(good))
    with pytest.raises(ObservationError, match=message):
        runtime.act(bad)
    assert sum(c.calls for c in counters.values()) == 0
    for k, v in snapshot.items():  # the caller's arrays are untouched
        np.testing.assert_array_equal(good[k], v)
    runtime.act(good)  # and the runtime still works
    assert sum(c.calls for c in counters.values()) == 1
    with pytest.raises(ObservationError, match="must be a dict"):
        runtime.act([good["pixels"], good["proprio"]])  # type: ignore[arg-type]  # on purpose


def test_scheduler_picks_levels_and_stats_count_them(reach_bundle) -> None:
    path, _, _ = reach_bundle
    runtime = PolicyRuntime.load(path, scheduler="fixed:0.5", deadline_ms=1e-6)
    obs = one_obs(2)
    for _ in range(30):
        runtime.act(obs)
    stats = runtime.stats()
    assert stats["steps"] == 30 and stats["mean_budget"] == 0.5
    assert stats["levels"]["0.5"]["steps"] == 30 and stats["levels"]["1"]["steps"] == 0
    assert stats["deadline_misses"] == 30  # every step takes longer than a nanosecond
    lvl = stats["levels"]["0.5"]
    assert lvl["p50_ms"] <= lvl["p99_ms"] <= lvl["max_ms"]
    # the adaptive scheduler alternates levels under its average-budget constraint
    adaptive = PolicyRuntime.load(path, scheduler={"kind": "adaptive", "target": 0.75})
    for i in range(40):
        adaptive.act(one_obs(i))
    assert adaptive.stats()["mean_budget"] <= 0.75 + 1e-9
    assert set(adaptive.levels) == {1.0, 0.5}


def test_bad_scheduler_configs(reach_bundle) -> None:
    path, _, _ = reach_bundle
    with pytest.raises(ValueError, match="scheduler.kind"):
        PolicyRuntime.load(path, scheduler="fastest")
    with pytest.raises(BundleError, match="not all in the bundle's levels"):
        PolicyRuntime.load(path, scheduler={"kind": "fixed", "budget": 1.0, "levels": [1, 0.25]})


def test_memory_stays_flat_over_10000_steps(reach_bundle) -> None:
    path, _, _ = reach_bundle
    runtime = PolicyRuntime.load(path, scheduler="adaptive:0.75", deadline_ms=5.0, window=1000)
    obs = one_obs(4)
    for _ in range(500):  # warm-up: sessions, scheduler windows, latency rings
        runtime.act(obs)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(10_000):
            runtime.act(obs)
        runtime.stats()
        now, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert now - base < 64 * 1024, f"grew by {now - base} bytes over 10,000 steps"
    assert runtime.stats()["steps"] == 10_500


def _copy(reach_bundle, tmp_path):
    path, _, _ = reach_bundle
    dst = tmp_path / "bundle"
    shutil.copytree(path, dst)
    return dst


def test_corrupted_onnx_file_gives_a_clear_error(reach_bundle, tmp_path) -> None:
    bundle = _copy(reach_bundle, tmp_path)
    target = bundle / "level_0.50.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"level_0.50.onnx: SHA-256 does not match"):
        PolicyRuntime.load(bundle)
    target.write_bytes(bytes(data[:200]))  # truncated, and the hash check skipped
    with pytest.raises(BundleError, match=r"level_0.50.onnx: onnxruntime cannot load"):
        PolicyRuntime.load(bundle, verify=False)
    target.unlink()
    with pytest.raises(BundleError, match=r"level_0.50.onnx: file not found"):
        PolicyRuntime.load(bundle)


def test_bad_bundles_give_clear_errors(reach_bundle, tmp_path) -> None:
    with pytest.raises(BundleError, match="not a bundle directory"):
        PolicyRuntime.load(tmp_path / "nowhere")
    bundle = _copy(reach_bundle, tmp_path)
    manifest = bundle / "bundle.json"
    data = json.loads(manifest.read_text())
    manifest.write_text("{truncated")
    with pytest.raises(BundleError, match=r"bundle.json: not valid JSON"):
        PolicyRuntime.load(bundle)
    manifest.write_text(json.dumps({**data, "format": "other/9"}))
    with pytest.raises(BundleError, match="expected format 'swan-bundle/1'"):
        PolicyRuntime.load(bundle)
    manifest.write_text(json.dumps({k: v for k, v in data.items() if k != "obs_spec"}))
    with pytest.raises(BundleError, match="missing field 'obs_spec'"):
        PolicyRuntime.load(bundle)
    manifest.unlink()
    with pytest.raises(BundleError, match="bundle.json: file not found"):
        PolicyRuntime.load(bundle)


def test_predict_is_batched_and_validated(reach_bundle) -> None:
    path, _, _ = reach_bundle
    runtime = PolicyRuntime.load(path)
    batch = {k: np.stack([one_obs(i)[k] for i in range(16)]) for k in ("pixels", "proprio")}
    assert runtime.predict(batch, 0.5).shape == (16, 2)
    with pytest.raises(ValueError, match="level"):
        runtime.predict(batch, 0.3)
    with pytest.raises(ObservationError, match="batch size"):
        runtime.predict({**batch, "proprio": batch["proprio"][:3]})
