"""What the imitation and RL runs share: the process's place in a distributed job,
Ctrl-C handling, the errors a run stops with and the evaluation record of
``metrics.jsonl``."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from swan_policy.evaluate import BudgetResult


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint was written; the run can be resumed."""


@dataclass
class RunContext:
    """A run's directory and this process's rank in it."""

    run_dir: Path
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def log(self, writer: Any, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` and its numbers to TensorBoard (if a
        ``writer`` is given)."""
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            step = record["step"]
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    writer.add_scalar(k.replace("@", "_at_"), v, step)


def init_process(run_dir: Path) -> tuple[RunContext, torch.device]:
    """Join the process group when launched by ``torchrun`` (nccl on GPU, gloo on CPU);
    each rank gets its own GPU when there are any."""
    ctx = RunContext(run_dir)
    if dist.is_available() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device(f"cuda:{ctx.rank % torch.cuda.device_count()}")
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    return ctx, device


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank of the process group (the flag
    itself outside a distributed job).

    A decision that stops or skips a step (Ctrl-C, a non-finite loss) must be taken by
    all ranks at once: a rank that stops alone leaves the others blocked in DDP's
    gradient all-reduce, and a second Ctrl-C delivered to one worker at a time lands on
    different steps."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@contextmanager
def graceful_interrupt() -> Iterator[dict[str, bool]]:
    """First Ctrl-C sets a flag (the loop checkpoints and stops); a second exits at once."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        flag["stop"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def eval_record(step: int, results: list[BudgetResult]) -> dict[str, Any]:
    """One ``kind: eval`` line of ``metrics.jsonl``: success, return and MACs per budget."""
    rec: dict[str, Any] = {"step": step, "kind": "eval"}
    for r in results:
        rec[f"eval/success@{r.budget:g}"] = r.success_rate
        rec[f"eval/return@{r.budget:g}"] = r.return_mean
        rec[f"eval/macs@{r.budget:g}"] = r.macs_per_step
    return rec
