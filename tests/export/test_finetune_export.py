"""`swan export --finetune`: each level is fine-tuned by BC before it is exported, the
bundle ships the fine-tuned weights, and an unchanged second export reuses the runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from swan_policy.budget.ladder import Ladder, level_policy
from swan_policy.cli import main
from swan_policy.config import load_config
from swan_policy.policy import SwanPolicy
from swan_policy.train.checkpoint import latest_checkpoint
from swan_policy.train.dagger import total_steps
from swan_policy.train.finetune import finetune_config
from tests.conftest import random_obs


def test_finetune_config_is_plain_bc_for_a_fraction_of_the_steps() -> None:
    cfg = load_config("configs/reach_bc.yaml")
    ft = finetune_config(cfg, 0.25, 0.3)
    assert ft.method == "bc" and not ft.bc.sandwich and not ft.policy.gate.enabled
    assert ft.bc.steps == round(0.25 * total_steps(cfg)) and total_steps(ft) == ft.bc.steps
    assert ft.bc.lr == pytest.approx(0.3 * cfg.bc.lr)
    assert ft.eval.every == 0 and not ft.eval.at_end
    assert ft.demos == cfg.demos and ft.env == cfg.env
    with pytest.raises(ValueError, match="frac: must be > 0"):
        finetune_config(cfg, 0.0)


def _onnx_actions(path: Path, obs: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: obs[i.name] for i in sess.get_inputs()}
    return np.asarray(sess.run(["action"], feeds)[0])


def test_swan_export_finetune_ships_the_finetuned_levels(
    reference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    out = tmp_path / "bundle"
    report = tmp_path / "export.json"
    args = ["export", "--run", str(run), "--out", str(out), "--levels", "1,0.5"]
    args += ["--calib-episodes", "2", "--workers", "1", "--checkpoint", "last"]
    args += ["--finetune", "0.5", "--json", str(report)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fine-tune level 0.5: 3 BC steps" in printed
    assert "static cuts" not in printed
    manifest = json.loads((out / "bundle.json").read_text())
    cfg = load_config(run / "config.yaml")
    policy = SwanPolicy.from_pretrained(latest_checkpoint(run))
    ladder = Ladder.load(run / "ladder.json")
    obs = {k: v.numpy() for k, v in random_obs(policy.config, 5, seed=1).items()}
    for entry in manifest["levels"]:
        b = entry["budget"]
        ft_run = run / "finetune" / f"level_{b:g}"
        assert entry["finetuned"]["steps"] == 3 == total_steps(finetune_config(cfg, 0.5))
        assert entry["finetuned"]["run"] == str(ft_run)
        tuned = SwanPolicy.from_pretrained(latest_checkpoint(ft_run)).eval()
        cut = level_policy(policy, ladder, b, "folded")
        shipped = _onnx_actions(out / entry["file"], obs)
        with torch.no_grad():
            batch = {k: torch.from_numpy(v) for k, v in obs.items()}
            want, before = tuned(batch, 1.0).numpy(), cut(batch, 1.0).numpy()
        np.testing.assert_allclose(shipped, want, atol=1e-4)
        assert np.abs(shipped - before).max() > 1e-3  # not the level as cut
    assert set(json.loads(report.read_text())["finetuned"]) == {"1", "0.5"}

    # unchanged run, same options: the fine-tunes are reused, not trained again
    stamps = {p: p.stat().st_mtime_ns for p in (run / "finetune").rglob("*.safetensors")}
    assert main([*args[:-2], "--overwrite"]) == 0
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # gate masks cannot be kept on a fine-tuned plain dense level
    bad = ["export", "--run", str(run), "--out", str(tmp_path / "b2"), "--gates", "kept"]
    assert main([*bad, "--finetune", "0.5", "--calib-episodes", "1", "--workers", "1"]) == 2
    assert "--finetune makes plain dense levels" in capsys.readouterr().err


def test_export_run_refuses_to_finetune_an_rl_run(tmp_path: Path) -> None:
    from swan_policy.export.pipeline import export_run
    from tests.conftest import tiny_config

    cfg = load_config("configs/reach_bc.yaml", ["method=ppo"])
    policy = SwanPolicy(tiny_config())
    with pytest.raises(ValueError, match="needs an imitation run, not method 'ppo'"):
        export_run(policy, cfg, tmp_path, tmp_path / "b", levels=[1.0], finetune=0.25)
    assert not (tmp_path / "b").exists()


def test_dagger_rounds_lists_the_learners_rounds_in_order(tmp_path: Path) -> None:
    from swan_policy.train.finetune import dagger_rounds

    assert dagger_rounds(tmp_path) == []  # no dagger/ folder: a BC run
    (tmp_path / "dagger").mkdir()
    for name in ("round_0", "round_2", "round_10", "round_1", "round_x", "notes"):
        (tmp_path / "dagger" / f"{name}.safetensors").write_bytes(b"")
    rounds = [p.name for p in dagger_rounds(tmp_path)]
    # round 0 (a teacher's own episodes) is not a learner round; 10 sorts after 2
    assert rounds == ["round_1.safetensors", "round_2.safetensors", "round_10.safetensors"]


def test_finetune_on_extra_data_trains_on_it_and_keeps_the_demo_normalisation(
    reference_run: Path, tmp_path: Path
) -> None:
    from swan_policy.budget.ladder import fold_all_gates
    from swan_policy.serialization import save_tensors
    from swan_policy.train.bc import load_bc_data
    from swan_policy.train.finetune import finetune

    cfg = finetune_config(load_config(reference_run / "config.yaml"), 1.0)
    policy = SwanPolicy.from_pretrained(latest_checkpoint(reference_run))
    demos = load_bc_data(Path(cfg.demos.path))
    extra = tmp_path / "round_1.safetensors"  # labelled states far from the demos'
    save_tensors(
        extra,
        {"pixels": demos.pixels, "proprio": demos.proprio + 5.0, "actions": -demos.actions},
    )

    def tune(name: str, data: list[Path]) -> tuple[SwanPolicy, dict]:
        return finetune(fold_all_gates(policy), cfg, tmp_path / name, False, extra_data=data)

    plain, plain_info = tune("plain", [])
    more, info = tune("more", [extra])
    assert "extra_data" not in plain_info and info["extra_data"] == [str(extra)]
    # the normalisation comes from the demos alone, whatever else is trained on
    torch.testing.assert_close(more.proprio_mean, plain.proprio_mean)
    torch.testing.assert_close(more.proprio_std, plain.proprio_std)
    # the same seed and steps: only the sampled data differs, so the weights do
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(plain.state_dict().values(), more.state_dict().values(), strict=True)
    )
    assert diff > 1e-4
    # unchanged: reused; the extra file changed: trained again
    stamp = (tmp_path / "more" / "finetune.json").stat().st_mtime_ns
    tune("more", [extra])
    assert (tmp_path / "more" / "finetune.json").stat().st_mtime_ns == stamp
    save_tensors(
        extra, {"pixels": demos.pixels, "proprio": demos.proprio, "actions": demos.actions}
    )
    _, again = tune("more", [extra])
    assert again["extra_hash"] != info["extra_hash"]
