"""Run ``swan`` (the real CLI) with a pause injected into the checkpoint writer.

Used by the crash-safety tests (RELIABILITY.md rows 6 and 7) as a subprocess::

    python tests/reliability/_crash_child.py PHASE CALL MARKER -- train --config ...

The pause is installed from the test side, so swan_policy carries no test hook. At the
``CALL``-th call of the patched writer (1-based), the child touches ``MARKER`` and
sleeps forever -- a deterministic point for the test to SIGKILL or Ctrl-C it:

* ``files``: after ``optimizer.safetensors`` is written into the checkpoint's temp
  directory (``trainer_state.json`` is still missing);
* ``rename``: after the temp directory is complete, before it is renamed into place
  (same recovery path as ``files``; not in the default test run, to keep it short);
* ``pointer``: after the new ``last`` is written to its temp file, before the rename;
* ``sigint-eval``: at the first evaluation, once its worker processes are up, touch
  ``MARKER`` and wait for a Ctrl-C before evaluating (the workers must survive it);
  then, at the first checkpoint after that Ctrl-C, touch ``MARKER.save`` and sleep:
  the state a second Ctrl-C interrupts (``CALL`` ignored).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swan_policy import cli
from swan_policy.train import checkpoint


def _pause(marker: Path) -> None:
    marker.touch()
    while True:  # until the test kills us (or a second Ctrl-C interrupts the sleep)
        time.sleep(3600)


def install(phase: str, call: int, marker: Path) -> None:
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == call

    if phase == "files":
        real_tensors = checkpoint.save_tensors

        def save_tensors(path: Path, *args: Any, **kwargs: Any) -> None:
            real_tensors(path, *args, **kwargs)
            if hit():
                _pause(marker)

        checkpoint.save_tensors = save_tensors
    elif phase == "rename":
        real_json = checkpoint.save_json

        def save_json(path: Path, obj: Any) -> None:
            real_json(path, obj)
            if hit():
                _pause(marker)

        checkpoint.save_json = save_json
    elif phase == "pointer":
        real_atomic = checkpoint.atomic_write

        def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
            def write_then_pause(tmp: Path) -> None:
                write(tmp)
                if hit():
                    _pause(marker)

            real_atomic(path, write_then_pause)

        checkpoint.atomic_write = atomic_write
    elif phase == "sigint-eval":
        from swan_policy import evaluate
        from swan_policy.train import imitation

        real_episodes, real_save = evaluate.run_episodes, imitation.save_checkpoint

        def interrupted() -> bool:
            # graceful_interrupt() restores the default handler at the first Ctrl-C
            return signal.getsignal(signal.SIGINT) is signal.default_int_handler

        def run_episodes(*args: Any, **kwargs: Any) -> Any:
            if not interrupted():
                args[1].get_attr("spec")  # a round trip: every worker has built its env
                marker.touch()
                while not interrupted():
                    time.sleep(0.05)
            return real_episodes(*args, **kwargs)

        def save_checkpoint(*args: Any, **kwargs: Any) -> Path:
            if interrupted():
                _pause(marker.with_suffix(".save"))
            return real_save(*args, **kwargs)

        # patched where they are looked up at call time
        evaluate.run_episodes = run_episodes
        imitation.save_checkpoint = save_checkpoint
    else:
        raise SystemExit(f"unknown phase {phase!r}")


if __name__ == "__main__":
    phase, call, marker, sep, *argv = sys.argv[1:]
    assert sep == "--", sys.argv
    install(phase, int(call), Path(marker))
    sys.exit(cli.main(argv))
