"""Review of ``swan eval`` / ``swan inspect`` (swan_policy/evaluate.py, inspect.py and
their CLI): env faults inside rollout workers, Ctrl-C, output paths that cannot be
written, and inputs that used to be accepted silently or crash late."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from swan_policy.config import EnvConfig

ENV_ID = "ReviewFaulty-v0"
# "module:id": gymnasium imports this module first, so env worker processes find the id
QUALIFIED_ID = f"tests.test_review_eval_inspect:{ENV_ID}"


class FaultyEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """5-step episodes of {"proprio": [4]}; the episode reset with ``fail_seed`` raises
    (``how="raise"``) or kills its process (``how="kill"``) at step ``fail_step``.
    Renders nothing."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        fail_seed: int = -1,
        fail_step: int = 2,
        how: str = "raise",
        render_mode: str | None = None,
    ) -> None:
        self.observation_space = spaces.Dict({"proprio": spaces.Box(-1.0, 1.0, (4,), np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.fail_seed, self.fail_step, self.how = fail_seed, fail_step, how
        self.render_mode = render_mode
        self._seed: int | None = None
        self._t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"proprio": np.full(4, 0.1 * self._t, np.float32)}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._seed, self._t = seed, 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        self._t += 1
        if self._seed == self.fail_seed and self._t == self.fail_step:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("boom in the physics")
        return self._obs(), 1.0, self._t >= 5, False, {"is_success": True}

    def render(self) -> None:
        return None


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=FaultyEnv)


class Hung(BaseException):
    """Not an Exception: no ``except Exception`` in the code under test swallows it."""


@pytest.fixture
def no_hang() -> Iterator[None]:
    """A hung rollout fails the test instead of blocking the suite."""

    def hung(*_: Any) -> None:
        raise Hung("the evaluation hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _state_policy() -> Any:
    import torch

    from swan_policy.policy import SwanPolicy
    from tests.conftest import state_config

    torch.manual_seed(0)
    return SwanPolicy(state_config())


@pytest.mark.parametrize("workers", [1, 2])
def test_env_error_in_a_rollout_is_one_evaluator_error(no_hang: None, workers: int) -> None:
    """An env that raises inside a worker used to kill the worker with a traceback on
    stderr and surface as a bare EOFError in the parent (``swan eval`` then printed
    "error: aborted"); now one EnvWorkerError names the episode and the cause."""
    from swan_policy import evaluate

    env = EnvConfig(id=QUALIFIED_ID, kwargs={"fail_seed": 10_001, "how": "raise"})
    with pytest.raises(evaluate.EnvWorkerError) as info:
        evaluate.evaluate_policy(_state_policy(), env, 4, [1.0], workers=workers)
    message = str(info.value)
    assert "episode seed 10001" in message and "RuntimeError: boom in the physics" in message
    assert "\n" not in message
    # the same env without the fault evaluates normally (the wrapper changes nothing else)
    ok = EnvConfig(id=QUALIFIED_ID)
    (row,) = evaluate.evaluate_policy(_state_policy(), ok, 3, [1.0], workers=workers)
    assert row.success_rate == 1.0 and row.length_mean == 5.0 and row.return_mean == 5.0


def test_a_killed_worker_is_one_evaluator_error_not_a_pipe_error(no_hang: None) -> None:
    """A worker that dies (segfault, OOM kill), or one whose env raised (it died with
    a traceback), used to hang the evaluation for ever: the rollout's EOFError sent it
    to ``vec.close()``, which waited on the pipe of a worker already read."""
    from swan_policy import evaluate

    env = EnvConfig(id=QUALIFIED_ID, kwargs={"fail_seed": 10_001, "how": "kill"})
    with pytest.raises(evaluate.EnvWorkerError, match="worker process died"):
        evaluate.evaluate_policy(_state_policy(), env, 4, [1.0], workers=2)


def test_an_env_a_worker_cannot_create_is_one_error_naming_the_cause(tmp_path: Path) -> None:
    """A worker whose env fails to build (a bad kwarg; no GL context in the worker) used
    to die printing its traceback, and the parent said only that it died while starting.
    Run in a fresh interpreter: the workers' stderr is the process's own."""
    import subprocess
    import sys

    script = tmp_path / "make_two.py"
    script.write_text(
        "from swan_policy.config import EnvConfig\n"
        "from swan_policy.evaluate import EnvWorkerError, make_vec_env\n"
        "if __name__ == '__main__':\n"
        "    cfg = EnvConfig(id='swan_envs/Reach-v0', kwargs={'bogus': 1})\n"
        "    try:\n"
        "        make_vec_env(cfg, 2)\n"
        "    except EnvWorkerError as e:\n"
        "        print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        "an env worker could not create swan_envs/Reach-v0: TypeError: "
    ), proc.stdout
    assert "'bogus'" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_evaluate_policy_refuses_bad_episodes_and_budgets_before_any_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from swan_policy import evaluate

    def no_env(*_: Any, **__: Any) -> Any:
        raise AssertionError("an env was made for an evaluation that cannot run")

    monkeypatch.setattr(evaluate, "make_env", no_env)
    monkeypatch.setattr(evaluate, "make_vec_env", no_env)
    env = EnvConfig(id="swan_envs/Reach-v0")
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        evaluate.evaluate_policy(_state_policy(), env, 0, [1.0])
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"budgets must be in \(0, 1\]"):
            evaluate.evaluate_policy(_state_policy(), env, 2, [1.0, bad])


def test_record_video_of_an_env_without_frames_is_a_clear_error(tmp_path: Path) -> None:
    from swan_policy.evaluate import record_video

    with pytest.raises(ValueError, match="renders no rgb_array frames"):
        record_video(_state_policy(), EnvConfig(id=QUALIFIED_ID), tmp_path / "ep.mp4", 0)
    assert not (tmp_path / "ep.mp4").exists()


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_compact import make_run

    return make_run(tmp_path_factory.mktemp("review"))


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    from swan_policy import evaluate

    def fail(*_: Any, **__: Any) -> Any:
        raise AssertionError("evaluated although an output path cannot be written")

    monkeypatch.setattr(evaluate, "evaluate_policy", fail)


@pytest.mark.parametrize(
    ("flag", "path", "message"),
    [
        ("--json", "afile/out.json", "error: --json: cannot create {p}: {tmp}/afile is not a dir"),
        ("--json", "adir", "error: --json: {p} is a directory, not a file"),
        ("--plot", "plot.jpg", "error: --plot: {p} must end in .png"),
        ("--plot", "afile/p.png", "error: --plot: cannot create {p}: {tmp}/afile is not a dir"),
        ("--video", "ep.txt", "error: --video: {p} must end in .mp4"),
        ("--video", "afile/ep.mp4", "error: --video: cannot create {p}: {tmp}/afile is not a"),
        ("--video", "adir.mp4", "error: --video: {p} is a directory, not a file"),
    ],
)
def test_eval_refuses_an_unwritable_output_before_evaluating(
    run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    path: str,
    message: str,
) -> None:
    """--json/--plot/--video were written after the whole evaluation: a bad path threw
    away minutes of rollouts with a traceback (or wrote a PNG named .jpg)."""
    from swan_policy.cli import main

    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.mp4").mkdir()
    _no_evaluation(monkeypatch)
    p = tmp_path / path
    assert main(["eval", "--run", str(run), "--workers", "1", flag, str(p)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(message.format(p=p, tmp=tmp_path)), line
    assert sorted(q.name for q in tmp_path.iterdir()) == ["adir", "adir.mp4", "afile"]


def test_eval_of_a_missing_run_names_the_run_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from swan_policy.cli import main

    assert main(["eval", "--run", str(tmp_path / "nope")]) == 2
    assert _one_error_line(capsys) == f"error: --run: {tmp_path / 'nope'} is not a run directory"
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--run", str(tmp_path / "empty")]) == 2
    assert _one_error_line(capsys).startswith(f"error: --run: {tmp_path / 'empty'} has no config")


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        ("env", 1, "error: the env raised in episode seed 3: RuntimeError: boom"),
        ("ctrl-c", 130, "error: interrupted (Ctrl-C): evaluation stopped, nothing written"),
    ],
)
def test_eval_env_fault_and_ctrl_c_are_one_line(
    run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    code: int,
    message: str,
) -> None:
    """Ctrl-C used to exit 130 without a word; an env fault printed "error: aborted"
    (the EOFError of the dead worker) after the worker's traceback."""
    from swan_policy import evaluate
    from swan_policy.cli import main

    def faulty(*_: Any, **__: Any) -> Any:
        if fault == "env":
            raise evaluate.EnvWorkerError("the env raised in episode seed 3: RuntimeError: boom")
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_policy", faulty)
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(run), "--workers", "1", "--json", str(out)]) == code
    assert _one_error_line(capsys) == message
    assert not out.exists()


def test_eval_sweep_with_adaptive_does_not_duplicate_rows(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swan_policy import evaluate
    from swan_policy.cli import main

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def capture(*args: Any, schedulers: Any = (), **__: Any) -> Any:
        seen["schedulers"] = list(schedulers)
        raise Stop

    monkeypatch.setattr(evaluate, "evaluate_policy", capture)
    args = ["eval", "--run", str(run), "--sweep", "--scheduler", "adaptive", "--avg-budget", "0.4"]
    with pytest.raises(Stop):
        main(args)
    assert [s["target"] for s in seen["schedulers"]] == [0.4]


def test_inspect_out_that_is_a_file_is_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming a file crashed with NotADirectoryError (with --overwrite too)."""
    from swan_policy.cli import main

    out = tmp_path / "notes.txt"
    out.write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main(["inspect", "--run", str(run), "--out", str(out), *extra]) == 2
        assert _one_error_line(capsys) == f"error: --out: {out} is a file, not a directory"
        assert out.read_text() == "mine"
    inside = out / "sub"
    assert main(["inspect", "--run", str(run), "--out", str(inside)]) == 2
    assert _one_error_line(capsys).startswith(f"error: --out: cannot create {inside}: {out}")


def test_inspect_scheduler_fixed_without_a_budget_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--scheduler fixed`` used to be dropped silently: the episodes ran at budget 1
    and summary.json said budget 1, scheduler null."""
    from swan_policy.cli import main

    out = tmp_path / "inspect"
    args = ["inspect", "--run", str(run), "--out", str(out), "--no-video", "--episodes", "1"]
    assert main([*args, "--scheduler", "fixed"]) == 2
    assert _one_error_line(capsys).startswith("error: --scheduler: 'fixed' needs a budget")
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--scheduler", "adaptive", "--avg-budget", "nan"],
            "error: --avg-budget: expected finite",
        ),
        (
            ["--scheduler", "deadline", "--deadline-ms", "inf"],
            "error: --deadline-ms: expected finite",
        ),
    ],
)
def test_eval_non_finite_scheduler_numbers_name_their_flag(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    """They were reported as "--scheduler: scheduler.target: ..." (or not at all)."""
    from swan_policy.cli import main

    assert main(["eval", "--run", "runs/does-not-matter", *flags]) == 2
    assert _one_error_line(capsys).startswith(message)


def test_inspect_overwrite_never_replaces_the_runs_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out <run>/best --overwrite`` deleted the policy being inspected (only the run
    directory itself was protected)."""
    from swan_policy.cli import main
    from tests.test_compact import make_run

    run = make_run(tmp_path)
    before = sorted(p.name for p in (run / "best").iterdir())
    for out in (run / "best", tmp_path / "elsewhere"):
        extra = [] if out == run / "best" else ["--checkpoint", str(out)]
        if extra:
            (run / "best").rename(out)
        args = [
            "inspect",
            "--run",
            str(run),
            "--out",
            str(out),
            "--overwrite",
            "--no-video",
            "--episodes",
            "1",
        ]
        assert main([*args, *extra]) == 2
        assert _one_error_line(capsys).startswith(f"error: --out: {out} holds ")
        assert sorted(p.name for p in out.iterdir()) == before
