"""Review of the trade-off benchmark's fairness (issue 8): seeds and ``--merge``."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from swan_policy.budget.ladder import calibrate_ladder
from swan_policy.evaluate import BudgetResult
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    return importlib.import_module("bench_tradeoff")


def _result(policy: SwanPolicy) -> BudgetResult:
    macs = float(policy.dense_macs())
    return BudgetResult("budget 1", 1.0, 1, 0.0, 0.0, 0.0, 1.0, 1.0, macs, {})


def test_scratch_init_is_set_by_the_seed_alone(
    bench: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The scratch arm's initial weights depend on ``seed``, not on what this process
    ran before (another arm's training, a reused run, an earlier seed)."""
    inits: list[dict[str, torch.Tensor]] = []

    def trained(run: Path, cfg: Any, init: SwanPolicy | None, *_: Any) -> tuple[Any, Any]:
        if run.name == "swan":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return SwanPolicy(tiny_config(gate={"init_bias": 1.0})).eval(), {"samples": 1}
        assert init is not None
        inits.append({k: v.clone() for k, v in init.state_dict().items()})
        return init, {"samples": 1}

    def ladder_of(policy: SwanPolicy, cfg: Any, args: Any, levels: Any = None) -> Any:
        return calibrate_ladder(policy, random_obs(policy.config, 16), [1.0, *args.levels])

    class Env:
        def close(self) -> None:
            pass

    monkeypatch.setattr(bench, "make_env", lambda cfg: Env())
    monkeypatch.setattr(bench, "resolve_policy_config", lambda cfg, env: tiny_config())
    monkeypatch.setattr(bench, "trained", trained)
    monkeypatch.setattr(bench, "ladder_of", ladder_of)
    monkeypatch.setattr(bench, "evaluate", lambda policy, *a, **k: [_result(policy)])
    args = argparse.Namespace(
        task="swan_envs/Reach-v0", variation="none", config=None, overrides=[],
        arms=["scratch"], reuse_swan=None, levels=[0.5], adaptive=[], episodes=1,
        finetune_frac=0.25, finetune_lr_scale=0.3, out=tmp_path, workers=1,
    )  # fmt: skip
    for before, seed in ((1, 0), (2, 0), (1, 1)):
        torch.manual_seed(before)  # whatever ran before in this process
        bench.run_seed(seed, args, Console(quiet=True))
    a, b, c = inits
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)  # same seed: same init
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed: another init


def _earlier(docs: Path, **meta: Any) -> Path:
    row = {"arm": "dense", "level": 1.0, "success": 0.5, "return": 0.0, "macs": 10.0}
    row["dense_macs"] = 10.0
    data = {
        "task": "swan_envs/Reach-v0",
        "variation": "none",
        "seeds": [0, 1],
        "episodes": 50,
        "eval_seed": 10_000,
        "levels": [0.75, 0.5, 0.25],
        "command": "earlier",
        "commands": ["earlier"],
        "minutes": 1.0,
        "per_seed": [[dict(row)], [dict(row)]],
        **meta,
    }
    docs.mkdir(parents=True, exist_ok=True)
    path = docs / "tradeoff_reach.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "extra",
    [
        ["--seeds", "0", "1", "--episodes", "20"],  # other evaluation episodes
        ["--seeds", "0", "1", "--eval-seed", "0"],  # other evaluation seeds
        ["--seeds", "0", "1", "--levels", "0.5"],  # other levels
        ["--seeds", "0"],  # would drop seed 1's rows of every arm
    ],
)
def test_merge_refuses_rows_from_other_settings(
    bench: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: list[str]
) -> None:
    """``--merge`` keeps earlier rows only where they were evaluated like the new ones
    (episodes, evaluation seeds, levels) and for the same seeds, as ``--combine`` does."""
    docs = tmp_path / "docs"
    path = _earlier(docs)
    before = path.read_text()
    new = {"arm": "slimmable", "level": 1.0, "success": 1.0, "return": 0.0, "macs": 10.0}
    new["dense_macs"] = 10.0
    monkeypatch.setattr(bench, "run_seed", lambda seed, args, console: [dict(new)])
    with pytest.raises(SystemExit, match="--merge"):
        bench.main(["--arms", "slimmable", "--merge", "--docs", str(docs), *extra])
    assert path.read_text() == before  # the earlier results are left as they were


def test_merge_with_the_same_settings_keeps_the_other_arms(
    bench: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    _earlier(docs)
    new = {"arm": "slimmable", "level": 1.0, "success": 1.0, "return": 0.0, "macs": 10.0}
    new["dense_macs"] = 10.0
    monkeypatch.setattr(bench, "run_seed", lambda seed, args, console: [dict(new)])
    out = bench.main(["--arms", "slimmable", "--merge", "--docs", str(docs), "--seeds", "0", "1"])
    assert out["seeds"] == [0, 1]
    assert sorted(r["arm"] for r in out["rows"]) == ["dense", "slimmable"]
    assert all(r["seeds"] == [0, 1] for r in out["rows"])


def test_a_reused_swan_run_must_have_trained_on_the_baselines_samples(
    bench: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--reuse-swan``: SWAN's samples are the run's own (its config.yaml), and a run
    trained on other steps x batch than the baselines is refused, like another
    architecture."""
    from swan_policy.config import dump_config, load_config

    swan = SwanPolicy(tiny_config(gate={"init_bias": 1.0})).eval()

    class Env:
        def close(self) -> None:
            pass

    monkeypatch.setattr(bench, "make_env", lambda cfg: Env())
    monkeypatch.setattr(bench, "resolve_policy_config", lambda cfg, env: tiny_config())
    monkeypatch.setattr(bench, "latest_checkpoint", lambda run: run)
    monkeypatch.setattr(bench.SwanPolicy, "from_pretrained", staticmethod(lambda path: swan))
    monkeypatch.setattr(
        bench,
        "ladder_of",
        lambda policy, cfg, args, levels=None: calibrate_ladder(
            policy, random_obs(policy.config, 16), [1.0, *args.levels]
        ),
    )
    monkeypatch.setattr(bench, "evaluate", lambda policy, *a, **k: [_result(policy)])
    run = tmp_path / "swan_run"
    run.mkdir()
    args = argparse.Namespace(
        task="swan_envs/Reach-v0", variation="none", config=None, overrides=[],
        arms=["ladder-ft"], reuse_swan=str(run), levels=[0.5], adaptive=[], episodes=1,
        finetune_frac=0.25, finetune_lr_scale=0.3, out=tmp_path, workers=1,
    )  # fmt: skip
    bench_cfg = bench.config_for(args, 0)
    own = load_config(REPO / "configs" / "reach_bc.yaml", [f"bc.steps={bench_cfg.bc.steps // 2}"])
    (run / "config.yaml").write_text(dump_config(own))
    monkeypatch.setattr(bench, "trained", lambda *a: (swan, {"samples": 0}))
    with pytest.raises(SystemExit, match="samples"):
        bench.run_seed(0, args, Console(quiet=True))
    (run / "config.yaml").write_text(dump_config(bench_cfg))  # the same recipe: accepted
    rows = bench.run_seed(0, args, Console(quiet=True))
    assert rows and all(r["arm"] == "swan-ladder-ft" for r in rows)
