"""Compaction: exact removal of never-active units, folding of always-on gates, the
report, idempotence, parity failures, and the `swan compact` command's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from swan_policy.cli import main
from swan_policy.compact import (
    check_parity,
    compact_policy,
    compact_with_report,
    fold_gates,
    graph_macs,
    plan_compaction,
)
from swan_policy.config import EnvConfig, PolicyConfig, dump_config, load_config
from swan_policy.evaluate import act_batch
from swan_policy.nn.layers import GatedConv2d, GatedLinear
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, state_config, tiny_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "reach_bc.yaml"
TINY_RUN = [
    "env.kwargs={width: 32, height: 32}",
    "policy.encoder.channels=[6, 6]",
    "policy.encoder.strides=[2, 1]",
    "policy.head.hidden=[12, 12]",
    "policy.head.proprio_hidden=8",
    "policy.gate.init_bias=0.0",
]


def _np(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in obs.items()}


def shaped_policy(cfg: PolicyConfig, seed: int = 0) -> SwanPolicy:
    """A policy with units that are never on (gate bias -50), and one layer whose gates
    are always on (bias +50): what sparsity training leaves behind."""
    torch.manual_seed(seed)
    policy = SwanPolicy(cfg).eval()
    layers = list(policy.gated_layers().values())
    with torch.no_grad():
        for layer in layers:
            bias = _gate_bias(layer)
            bias[: layer.num_units // 3] = -50.0  # dead units
        _gate_bias(layers[-1]).fill_(50.0)  # the last hidden layer: always on
    return policy


def _gate_bias(layer: GatedConv2d | GatedLinear) -> torch.Tensor:
    if isinstance(layer, GatedConv2d):
        assert layer.gate_fc is not None
        return layer.gate_fc.bias.data
    assert layer.gate_up is not None
    return layer.gate_up.bias.data


def calibrate(policy: SwanPolicy, obs: dict[str, np.ndarray]) -> None:
    policy.eval().reset_gate_stats()
    act_batch(policy, obs, 1.0)


@pytest.mark.parametrize("make_cfg", [tiny_config, state_config], ids=["pixels", "proprio"])
def test_exact_compaction_preserves_actions(make_cfg: Any) -> None:
    cfg = make_cfg()
    policy = shaped_policy(cfg)
    obs = _np(random_obs(cfg, 64, seed=1))
    calibrate(policy, obs)
    keep, fold = plan_compaction(policy, 0.0)
    names = list(policy.gated_layers())
    assert names[-1] in fold  # the always-on layer (others only if every kept unit was on)
    for name in fold:
        freq = policy.gates()[name].activation_frequency()[keep[name]]
        assert bool((freq == 1.0).all())
    small = fold_gates(compact_policy(policy, keep), fold).eval()
    # units were removed, and the folded layer lost its gate network
    assert sum(m.num_units for m in small.gated_layers().values()) < sum(
        m.num_units for m in policy.gated_layers().values()
    )
    assert small.gated_layers()[names[-1]].gate is None
    assert names[-1] in small.config.ungated
    assert sum(graph_macs(small).values()) < sum(graph_macs(policy).values())
    for b in (1.0, 0.5):  # keep-only compaction is exact at every budget
        kept_only = compact_policy(policy, keep).eval()
        np.testing.assert_allclose(
            act_batch(kept_only, obs, b), act_batch(policy, obs, b), atol=1e-5
        )
    np.testing.assert_allclose(act_batch(small, obs, 1.0), act_batch(policy, obs, 1.0), atol=1e-5)
    parity = check_parity(policy, small, keep, fold, obs)
    assert parity.exact and parity.states == 64
    # batch-1 sparse mode agrees too
    one = {k: v[0] for k, v in obs.items()}
    np.testing.assert_allclose(small.act(one), policy.act(one), atol=1e-5)


def test_compacted_policy_round_trips_and_compacting_twice_is_idempotent(
    tmp_path: Path,
) -> None:
    cfg = tiny_config()
    policy = shaped_policy(cfg)
    obs = _np(random_obs(cfg, 64, seed=2))
    calibrate(policy, obs)
    keep, fold = plan_compaction(policy, 0.0)
    once = fold_gates(compact_policy(policy, keep), fold)
    loaded = SwanPolicy.from_pretrained(once.save_pretrained(tmp_path / "c"))
    assert loaded.config == once.config
    np.testing.assert_array_equal(act_batch(loaded.eval(), obs, 1.0), act_batch(once, obs, 1.0))
    calibrate(loaded, obs)
    keep2, fold2 = plan_compaction(loaded, 0.0)
    assert fold2 == []  # nothing left to fold: the always-on gate is gone already
    twice = fold_gates(compact_policy(loaded, keep2), fold2).eval()
    assert twice.config == once.config
    for k, v in once.state_dict().items():
        torch.testing.assert_close(twice.state_dict()[k], v, rtol=0, atol=0)


def test_threshold_removes_rarely_active_units_and_parity_reports_them() -> None:
    cfg = tiny_config(gate={"init_bias": 0.0})
    torch.manual_seed(3)
    policy = SwanPolicy(cfg).eval()
    obs = _np(random_obs(cfg, 128, seed=4))
    calibrate(policy, obs)
    keep0, _ = plan_compaction(policy, 0.0)
    keep_t, _ = plan_compaction(policy, 0.3)
    n0 = sum(len(v) for v in keep0.values())
    nt = sum(len(v) for v in keep_t.values())
    assert nt < n0
    small = compact_policy(policy, keep_t).eval()
    parity = check_parity(policy, small, keep_t, [], obs)
    assert not parity.exact and sum(parity.unseen_units.values()) == n0 - nt
    assert parity.max_action_diff > 1e-5
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        plan_compaction(policy, 1.0)


def test_units_unseen_in_calibration_are_reported() -> None:
    """Held-out inputs that switch on a unit calibration never saw: not exact."""
    cfg = state_config()
    policy = shaped_policy(cfg)
    # head.layers.0 unit 15: on only when proprio[0] is far above anything in calibration
    layer = policy.head.hidden[0]
    assert layer.gate_down is not None and layer.gate_up is not None
    with torch.no_grad():
        layer.gate_down.weight.zero_()
        layer.gate_down.weight[0, 0] = 1.0
        layer.gate_up.weight[15].zero_()
        layer.gate_up.weight[15, 0] = 1.0
        layer.gate_up.bias[15] = -10.0
    calib = _np(random_obs(cfg, 64, seed=5))
    calib["proprio"][:, 0] = np.clip(calib["proprio"][:, 0], -2, 2)
    calibrate(policy, calib)
    keep, fold = plan_compaction(policy, 0.0)
    assert 15 not in keep["head.layers.0"].tolist()
    small = fold_gates(compact_policy(policy, keep), fold)
    assert check_parity(policy, small, keep, fold, calib).exact
    held = {k: v.copy() for k, v in calib.items()}
    held["proprio"][:8, 0] = 50.0
    parity = check_parity(policy, small, keep, fold, held)
    assert parity.unseen_units["head.layers.0"] == 1 and not parity.exact


def test_parity_counts_units_even_when_the_original_tracks_no_statistics() -> None:
    """A quiet original (statistics off, as the ladder leaves it) must not make every
    unit look unused, and hence the comparison look exact; both policies keep their own
    settings afterwards."""
    cfg = tiny_config(gate={"init_bias": 0.0})
    torch.manual_seed(3)
    policy = SwanPolicy(cfg).eval()
    obs = _np(random_obs(cfg, 128, seed=4))
    calibrate(policy, obs)
    keep_t, _ = plan_compaction(policy, 0.3)
    small = compact_policy(policy, keep_t).eval()
    loud = check_parity(policy, small, keep_t, [], obs)
    policy.track_stats = False
    for gate in policy.gates().values():
        gate.track_stats = False
    quiet = check_parity(policy, small, keep_t, [], obs)
    assert quiet.unseen_units == loud.unseen_units and sum(quiet.unseen_units.values()) > 0
    assert not policy.track_stats and not any(g.track_stats for g in policy.gates().values())
    assert small.track_stats and all(g.track_stats for g in small.gates().values())


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([0, 0, 1], r"duplicate unit indices"),
        ([0, 99], r"indices must be in \[0, 16\)"),
        ([-1, 2], r"indices must be in \[0, 16\)"),
        ([], r"keeps no unit"),
        ([0.0, 1.0], r"expected a 1-D list of unit indices"),
    ],
)
def test_compact_policy_refuses_bad_unit_indices(indices: list[Any], message: str) -> None:
    """A duplicated index would feed one unit twice to the next layer: a wrong model,
    built silently."""
    policy = SwanPolicy(tiny_config()).eval()
    assert policy.gated_layers()["head.layers.0"].num_units == 16
    with pytest.raises(ValueError, match=message):
        compact_policy(policy, {"head.layers.0": torch.tensor(indices)})


def test_plan_needs_statistics() -> None:
    policy = SwanPolicy(tiny_config()).eval()
    with pytest.raises(ValueError, match="no gate statistics"):
        plan_compaction(policy)


def test_ungated_layer_names_are_checked() -> None:
    from swan_policy.config import ConfigError

    with pytest.raises(ConfigError, match=r"policy\.ungated: unknown layer 'head\.layers\.9'"):
        SwanPolicy(tiny_config(ungated=["head.layers.9"]))


# ------------------------------------------------------------------ with an env / the CLI
def make_run(tmp: Path) -> Path:
    """A tiny untrained 'run': resolved config.yaml + best/ policy for Reach-v0 at 32x32."""
    from swan_policy.cli import resolved_policy_config

    cfg = load_config(CONFIG, TINY_RUN)
    cfg = cfg.model_copy(update={"policy": resolved_policy_config(cfg)})
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(0)
    policy = shaped_policy(cfg.policy)
    policy.save_pretrained(run / "best")
    return run


def test_compact_with_report_on_rollouts(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    cfg = load_config(run / "config.yaml")
    policy = SwanPolicy.from_pretrained(run / "best")
    # held-out = calibration episodes: every held-out state was seen, so exact
    small, report = compact_with_report(
        policy, cfg.env, 2, 0.0, 2, workers=1, calib_seed=7, heldout_seed=7
    )
    assert report.exact and report.max_action_diff <= 1e-5 and report.unseen_units == 0
    assert report.calib_samples == report.heldout_steps > 0
    assert report.macs_after < report.macs_before and 0 < report.macs_reduction < 1
    assert report.success_before == report.success_after
    names = [r.name for r in report.layers]
    assert names[:2] == ["encoder.layers.0", "encoder.layers.1"] and "head.out" in names
    folded = [r.name for r in report.layers if r.gate_after == "folded"]
    assert "head.layers.1" in folded  # always on by construction
    for r in report.layers:
        assert r.units_after <= r.units_before
        assert r.executed_macs_after <= r.executed_macs_before + 1e-6 * r.executed_macs_before
    data = report.to_json()
    for key in (
        "layers",
        "macs_before",
        "macs_after",
        "macs_reduction",
        "max_action_diff",
        "success_before",
        "success_after",
        "exact",
        "unseen_units",
    ):
        assert key in data
    assert isinstance(small, SwanPolicy)
    with pytest.raises(ValueError, match="env.id"):
        compact_with_report(policy, EnvConfig(), 1, 0.0, 1)


def test_swan_compact_cli_writes_policy_and_report_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    args = ["compact", "--run", str(run), "--calib-episodes", "2", "--heldout-episodes", "2"]
    args += ["--workers", "1", "--calib-seed", "3", "--heldout-seed", "3"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "encoder.layers.0" in out and "parity" in out and "exact" in out
    report = json.loads((run / "compact" / "compaction.json").read_text())
    assert report["exact"] and report["macs_after"] < report["macs_before"]
    first = SwanPolicy.from_pretrained(run / "compact")
    # again, from the compact policy: nothing more to remove or fold
    again = [*args, "--checkpoint", str(run / "compact"), "--out", str(tmp_path / "c2")]
    assert main(again) == 0, capsys.readouterr().err
    second = SwanPolicy.from_pretrained(tmp_path / "c2")
    assert second.config == first.config
    report2 = json.loads((tmp_path / "c2" / "compaction.json").read_text())
    assert report2["macs_after"] == report2["macs_before"] == report["macs_after"]
    # the output exists now: refused without --overwrite
    capsys.readouterr()
    assert main(args) == 2
    assert capsys.readouterr().err.strip().startswith("error: --out:")


def test_swan_compact_not_exact_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When held-out states switch on units calibration never saw, the command exits 2
    with one line that names the layers and advises more calibration episodes."""
    import swan_policy.compact as compact_mod

    run = make_run(tmp_path)
    real = compact_mod.compact_with_report

    def unlucky(*a: Any, **k: Any) -> Any:
        small, report = real(*a, **k)
        report.layers[1].unseen_units, report.unseen_units = 2, 2
        report.max_action_diff = 0.03
        return small, report

    monkeypatch.setattr(compact_mod, "compact_with_report", unlucky)
    args = ["compact", "--run", str(run), "--calib-episodes", "1", "--heldout-episodes", "1"]
    assert main([*args, "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: compaction is not exact on held-out")
    assert "encoder.layers.1 x2" in err[0] and "more --calib-episodes (now 1)" in err[0]
    assert not (run / "compact").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "1.5"], "error: --threshold: must be in [0, 1), got 1.5"),
        (["--threshold", "-0.1"], "error: --threshold: must be in [0, 1), got -0.1"),
        (["--calib-episodes", "0"], "error: Invalid value for '--calib-episodes'"),
    ],
)
def test_swan_compact_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["compact", "--run", str(tmp_path), *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err
    assert "Traceback" not in captured.err + captured.out


def test_swan_compact_missing_run_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compact", "--run", "no/such/run"]) == 2
    assert capsys.readouterr().err.strip() == "error: --run: no/such/run is not a run directory"


def test_an_env_fault_in_compacts_rollouts_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollout engine's EnvWorkerError (an env raised, a worker died) reaches the user
    of every verb that rolls out as one ``error:`` line, exit 1, not a traceback."""
    import swan_policy.evaluate as evaluate

    run = make_run(tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise evaluate.EnvWorkerError("the env raised in episode seed 3: RuntimeError: boom")

    monkeypatch.setattr(evaluate, "run_episodes", broken)
    args = ["compact", "--run", str(run), "--calib-episodes", "2", "--heldout-episodes", "2"]
    assert main([*args, "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: the env raised in episode seed 3: RuntimeError: boom"
