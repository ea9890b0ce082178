"""The ``swan`` command: ``swan <verb> --config configs/x.yaml --set a.b=value``.

User mistakes (bad config, bad flag, missing file) print one ``error: ...`` line on
stderr and exit with status 2 -- never a traceback. Verbs that later issues fill are
registered now and say so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from swan_policy import __version__

app = typer.Typer(
    name="swan",
    help="Train, evaluate, compact, export and deploy SWAN-gated robot policies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """A mistake in the user's input: reported as one ``error:`` line, exit 2."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from swan_policy.config import ConfigError
    from swan_policy.serialization import CheckpointError
    from swan_policy.spec import ObservationError

    return (UserError, ConfigError, CheckpointError, ObservationError, FileNotFoundError)


def _version(value: bool) -> None:
    if value:
        console.print(f"swan-policy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """SWAN: Switchable Activation Networks for vision-action robot policies."""


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config in configs/.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Dotted override, e.g. --set policy.gate.tau=0.5 (repeatable)."),
]


def parse_budgets(text: str) -> list[float]:
    """``"1,0.5,0.25"`` -> ``[1.0, 0.5, 0.25]``, each in ``(0, 1]``."""
    try:
        budgets = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--budgets: expected comma-separated numbers, got {text!r}") from None
    if not budgets or any(not 0.0 < b <= 1.0 for b in budgets):
        raise UserError(f"--budgets: each budget must be in (0, 1], got {text!r}")
    return budgets


@app.command()
def info(
    config: ConfigOpt,
    overrides: SetOpt = None,
    budgets: Annotated[str, typer.Option(help="Budgets to probe, comma-separated.")] = "1,0.5,0.25",
    batch: Annotated[int, typer.Option(min=1, max=4096, help="Observations to push.")] = 32,
    mode: Annotated[str, typer.Option(help="Execution mode: masked or sparse.")] = "masked",
) -> None:
    """Show active units and MACs per layer of the config's policy at several budgets.

    Builds the gated policy, pushes a batch of random observations through it at each
    budget and prints a table.
    """
    import torch

    from swan_policy.config import load_config
    from swan_policy.policy import SwanPolicy

    if mode not in ("masked", "sparse"):
        raise UserError(f"--mode: expected 'masked' or 'sparse', got {mode!r}")
    levels = parse_budgets(budgets)
    cfg = load_config(config, overrides or [])
    torch.manual_seed(cfg.seed)
    policy = SwanPolicy(cfg.policy).eval()
    pc = cfg.policy
    gen = torch.Generator().manual_seed(cfg.seed)
    obs = {
        "pixels": torch.randint(
            0, 256, (batch, *pc.image_hw, pc.image_channels), generator=gen, dtype=torch.uint8
        ),
        "proprio": torch.randn(batch, pc.proprio_dim, generator=gen),
    }
    per_budget = []
    with torch.inference_mode():
        for b in levels:
            policy.reset_gate_stats()
            policy(obs, b, mode="sparse" if mode == "sparse" else "masked")
            per_budget.append(policy.gate_stats())
    table = Table(title=f"{config.name}: {batch} observations, {mode} mode")
    table.add_column("layer", no_wrap=True)
    table.add_column("units", justify="right")
    for b in levels:
        table.add_column(f"active @ {b:g}", justify="right")
    for b in levels:
        table.add_column(f"MMACs @ {b:g}", justify="right")
    names = list(per_budget[0]["macs_per_step"])
    units = {n: s["units"] for n, s in per_budget[0]["layers"].items()}
    for name in names:
        row = [name, str(units.get(name, "-"))]
        for st in per_budget:
            layer = st["layers"].get(name)
            row.append(f"{layer['active_fraction'] * layer['units']:.1f}" if layer else "-")
        row += [f"{st['macs_per_step'][name] / 1e6:.3f}" for st in per_budget]
        table.add_row(*row)
    totals = [sum(st["macs_per_step"].values()) for st in per_budget]
    table.add_row(
        "total (gates included)",
        "",
        *[""] * len(levels),
        *[f"{t / 1e6:.3f}" for t in totals],
        style="bold",
    )
    console.print(table)
    dense = policy.dense_macs()
    console.print(
        f"dense (ungated) model: {dense / 1e6:.3f} MMACs per step; "
        + ", ".join(
            f"budget {b:g} -> {t / dense:.1%} of dense" for b, t in zip(levels, totals, strict=True)
        )
    )


def _not_yet(verb: str, issue: str) -> None:
    raise UserError(f"`swan {verb}` is not available yet ({issue})")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demos() -> None:
    """Collect expert demonstrations into an HDF5 file (not available yet)."""
    _not_yet("demos", "tasks and demos issue")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Train a gated policy by imitation or RL (not available yet)."""
    _not_yet("train", "imitation issue")


@app.command(
    name="eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def evaluate() -> None:
    """Evaluate a trained policy in simulation (not available yet)."""
    _not_yet("eval", "imitation issue")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def compact() -> None:
    """Compact a trained policy into smaller dense models (not available yet)."""
    _not_yet("compact", "budget issue")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def export() -> None:
    """Export a policy to ONNX bundles (not available yet)."""
    _not_yet("export", "ONNX export issue")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def deploy() -> None:
    """Run an exported bundle in a fixed-rate control loop (not available yet)."""
    _not_yet("deploy", "deploy issue")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``swan`` console script; returns the exit status."""
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        return int(e.exit_code)
    except typer.Abort:
        err_console.print("error: aborted", markup=False, highlight=False)
        return 130
    except typer.TyperException as e:  # bad flag, missing option, ...
        if not e.format_message():  # `swan` alone: help was printed
            return e.exit_code
        err_console.print(
            f"error: {e.format_message()}", markup=False, highlight=False, soft_wrap=True
        )
        return 2
    except _user_error_types() as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
