"""Schedulers inside the vectorised evaluator: per-env budgets grouped into one batched
forward per level give the same actions as separate forwards; per-episode budgets and
executed MACs are recorded; the adaptive constraint holds per episode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from swan_policy.budget.schedulers import Adaptive
from swan_policy.evaluate import (
    BudgetResult,
    act_batch,
    act_grouped,
    plot_tradeoff,
    run_episodes,
    summarise,
)
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, tiny_config


def _np_obs(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in obs.items()}


class FakeVecEnv:
    """The slice of SB3's VecEnv API that ``run_episodes`` uses: random observations,
    episode ``seed`` lasts ``5 + seed % 4`` steps, success when the mean action > 0."""

    def __init__(self, n: int, cfg: Any) -> None:
        self.num_envs, self.cfg = n, cfg
        self.reset_infos: list[dict[str, Any]] = [{} for _ in range(n)]
        self._seed, self._t, self._len = 0, np.zeros(n, int), np.zeros(n, int)
        self._rng = np.random.default_rng(0)

    def seed(self, seed: int) -> None:
        self._seed = seed

    def _obs(self) -> dict[str, np.ndarray]:
        return _np_obs(random_obs(self.cfg, self.num_envs, int(self._rng.integers(1 << 30))))

    def reset(self) -> dict[str, np.ndarray]:
        self._rng = np.random.default_rng(self._seed)
        self._t[:] = 0
        self._len = 5 + (self._seed + np.arange(self.num_envs)) % 4
        return self._obs()

    def step(self, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, list[Any]]:
        self._t += 1
        dones = self._t >= self._len
        infos = [{"is_success": bool(actions[i].mean() > 0)} for i in range(self.num_envs)]
        self._t[dones] = 0
        return self._obs(), -np.abs(actions).sum(1), dones, infos


def test_grouped_forward_equals_per_budget_forwards() -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    policy = SwanPolicy(cfg).eval()
    obs = _np_obs(random_obs(cfg, 6, seed=3))
    budgets = np.array([1.0, 0.25, 0.5, 1.0, 0.25, 0.75])
    actions, macs, margin, latency = act_grouped(policy, obs, budgets)
    for i, b in enumerate(budgets):
        alone = act_batch(policy, {k: v[i : i + 1] for k, v in obs.items()}, float(b))
        np.testing.assert_allclose(actions[i], alone[0], atol=1e-5)
        one_macs = sum(float(v[0]) for v in policy.executed_macs().values())
        assert abs(macs[i] - one_macs) <= 1e-6 * one_macs
    assert np.isfinite(margin).all() and (margin > 0).all()
    assert (latency >= 0).all()
    # the same observation at each level: lower budgets execute fewer MACs
    same = {k: np.repeat(v[:1], 4, axis=0) for k, v in obs.items()}
    _, macs, _, _ = act_grouped(policy, same, np.array([1.0, 0.75, 0.5, 0.25]))
    assert macs[0] >= macs[1] >= macs[2] >= macs[3] and macs[3] < macs[0]


def test_run_episodes_with_per_env_schedulers_records_budgets_and_macs(tmp_path: Path) -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    policy = SwanPolicy(cfg).eval()
    vec = FakeVecEnv(3, cfg)
    spec = {"kind": "adaptive", "target": 0.5, "signal": "obs"}
    eps = run_episodes(policy, vec, 7, seed=0, scheduler=spec)
    assert sorted(e.seed for e in eps) == list(range(7))
    for e in eps:
        assert len(e.budgets) == len(e.macs) == e.length == 5 + e.seed % 4
        assert set(e.budgets) <= {1.0, 0.75, 0.5, 0.25}
        assert e.mean_budget <= 0.5 + 1e-9  # the token bucket, per episode
        assert e.mean_macs > 0
    # the same episodes again: identical budgets (deterministic scheduler, same inputs)
    again = run_episodes(
        policy, FakeVecEnv(3, cfg), 7, seed=0, scheduler=lambda: Adaptive(0.5, "obs")
    )
    assert [e.budgets for e in eps] == [e.budgets for e in again]
    # fixed budget rows keep their per-step MACs; lower budget -> fewer mean MACs
    policy.reset_gate_stats()
    full = summarise("b1", 1.0, run_episodes(policy, FakeVecEnv(3, cfg), 4, 0, 1.0), policy)
    policy.reset_gate_stats()
    low = summarise("b.25", 0.25, run_episodes(policy, FakeVecEnv(3, cfg), 4, 0, 0.25), policy)
    assert low.macs_per_step < full.macs_per_step
    assert len(full.episode_mean_macs) == 4 and full.mean_budget == 1.0
    # per-episode lists are in seed order whatever order the episodes finished in
    eps4 = sorted(run_episodes(policy, FakeVecEnv(3, cfg), 4, 0, 1.0), key=lambda e: e.seed)
    for e in eps4:
        e.success = e.seed == 0
    back = summarise("b1", 1.0, eps4[::-1], policy)
    assert back.episode_success == [True, False, False, False]
    assert back.episode_mean_macs == [e.mean_macs for e in eps4]
    adaptive = summarise("adaptive", None, eps, policy, spec)
    assert max(adaptive.episode_mean_budget) <= 0.5 + 1e-9
    png = plot_tradeoff([full, low, adaptive], policy.dense_macs(), tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(adaptive, BudgetResult) and adaptive.to_json()["scheduler"] == spec


def test_swan_eval_sweep_writes_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from swan_policy.cli import main
    from tests.test_compact import make_run

    run = make_run(tmp_path)
    args = ["eval", "--run", str(run), "--episodes", "1", "--workers", "1", "--sweep"]
    assert main([*args, "--avg-budget", "0.4"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "adaptive 0.4 (action)" in out and "eval_sweep.png" in out.replace("\n", "")
    payload = json.loads((run / "eval_sweep.json").read_text())
    labels = [r["label"] for r in payload["results"]]
    assert labels == [
        "budget 1",
        "budget 0.75",
        "budget 0.5",
        "budget 0.25",
        "adaptive 0.4 (action)",
    ]
    adaptive = payload["results"][-1]
    assert adaptive["scheduler"]["kind"] == "adaptive"
    assert max(adaptive["episode_mean_budget"]) <= 0.4 + 1e-9
    assert (run / "eval_sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluation_and_calibration_do_not_depend_on_the_worker_count() -> None:
    """Each env is forwarded alone: a batched forward rounds a sample differently with
    other samples beside it, and finished envs' steps used to enter the gate statistics
    and the ladder's calibration set, so results moved with ``workers``. The
    calibration set is every observation of the rollouts: equal arrays mean equal
    trajectories."""
    from swan_policy.config import EnvConfig, ExperimentConfig
    from swan_policy.evaluate import evaluate_policy
    from swan_policy.export.pipeline import calibration_rollouts

    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config(image_hw=(32, 32), proprio_dim=6))
    env = EnvConfig(id="swan_envs/Reach-v0", kwargs={"width": 32, "height": 32})
    by_workers = {w: evaluate_policy(policy, env, 3, [1.0, 0.5], workers=w) for w in (1, 2)}
    for one, two in zip(by_workers[1], by_workers[2], strict=True):
        assert one.success_rate == two.success_rate and one.length_mean == two.length_mean
        # SB3's DummyVecEnv (1 worker) stores rewards as float32, SubprocVecEnv float64
        assert one.return_mean == pytest.approx(two.return_mean, rel=1e-6)
        assert one.episode_mean_macs == two.episode_mean_macs
        assert one.episode_success == two.episode_success and len(one.episode_success) == 3
        assert one.success_rate == sum(one.episode_success) / 3
        assert one.macs_per_step == two.macs_per_step
        assert one.active_fraction == two.active_fraction
    cfg = ExperimentConfig(env=env)
    calib = {w: calibration_rollouts(policy, cfg, 3, 0, w) for w in (1, 2)}
    assert calib[1].keys() == calib[2].keys()
    for k in calib[1]:
        np.testing.assert_array_equal(calib[1][k], calib[2][k])
