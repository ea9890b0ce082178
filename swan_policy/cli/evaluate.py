"""``swan eval`` and the parsing of its ``--scheduler`` values."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from swan_policy.cli._app import (
    UserError,
    app,
    console,
    err_console,
    load_run_policy,
    parse_budgets,
)


def check_output_path(
    path: Path, flag: str, suffix: str | None = None, is_dir: bool = False
) -> None:
    """Refuse, before any work, an output path that cannot be written: a file where a
    directory is needed or the reverse, a parent that is a file, a directory that is not
    writable, or (with ``suffix``) another file type. Creates nothing."""
    if suffix is not None and path.suffix.lower() != suffix:
        raise UserError(f"{flag}: {path} must end in {suffix}")
    if path.exists():
        if is_dir and not path.is_dir():
            raise UserError(f"{flag}: {path} is a file, not a directory")
        if not is_dir and path.is_dir():
            raise UserError(f"{flag}: {path} is a directory, not a file")
        if not os.access(path, os.W_OK):
            raise UserError(f"{flag}: {path} is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag}: cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot create {path}: {parent} is not writable")


def parse_schedulers(
    names: list[str] | None, avg_budgets: str | None, deadlines: str | None, signal: str
) -> list[dict[str, object]]:
    """``--scheduler`` values -> validated scheduler configs (one per sweep point).

    A value is a kind (``adaptive`` takes its targets from ``--avg-budget``,
    ``deadline`` its deadlines from ``--deadline-ms``; ``fixed`` means the ``--budgets``
    rows), a short form (``adaptive:0.4``) or an inline YAML mapping
    (``{kind: schedule, steps: [[0, 1.0], [20, 0.5]]}``).
    """
    import yaml

    from swan_policy.budget.schedulers import make_scheduler
    from swan_policy.config import parse_yaml

    def numbers(text: str | None, flag: str) -> list[float]:
        if text is None:
            return []
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
        if not values:
            raise UserError(f"{flag}: expected at least one number")
        if not all(math.isfinite(v) for v in values):
            raise UserError(f"{flag}: expected finite numbers, got {text!r}")
        return values

    targets, limits = numbers(avg_budgets, "--avg-budget"), numbers(deadlines, "--deadline-ms")
    specs: list[dict[str, object] | str] = []
    for name in names or []:
        name = name.strip()
        if name == "fixed":
            continue  # the --budgets rows
        if name == "adaptive":
            specs += [{"kind": "adaptive", "target": t, "signal": signal} for t in targets] or [
                {"kind": "adaptive", "signal": signal}  # fails below: target required
            ]
        elif name == "deadline":
            specs += [{"kind": "deadline", "deadline_ms": d} for d in limits] or [
                {"kind": "deadline"}
            ]
        elif name == "schedule":
            raise UserError(
                "--scheduler: 'schedule' needs a table, e.g. "
                "--scheduler '{kind: schedule, steps: [[0, 1.0], [20, 0.5]]}'"
            )
        elif name.startswith("{"):
            try:
                spec = parse_yaml(name)
            except (yaml.YAMLError, ValueError, RecursionError):
                raise UserError(f"--scheduler: cannot parse {name!r} as a YAML mapping") from None
            specs.append(spec)
        else:
            specs.append(name)
    kinds = {name.strip() for name in names or []}
    for values, flag, kind in (
        (targets, "--avg-budget", "adaptive"),
        (limits, "--deadline-ms", "deadline"),
    ):
        if values and kind not in kinds:  # would be ignored: say so
            raise UserError(f"{flag}: only used with --scheduler {kind}")
    out = []
    for spec in specs:
        try:
            out.append(make_scheduler(spec).spec())
        except ValueError as e:
            raise UserError(f"--scheduler: {e}") from None
    return out


@app.command(name="eval")
def evaluate(
    run: Annotated[Path, typer.Option(help="A run directory written by swan train.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per budget.")] = 50,
    budgets: Annotated[
        str | None,
        typer.Option(
            help="Fixed budgets, comma-separated (default 1,0.5,0.25 without --scheduler)."
        ),
    ] = None,
    scheduler: Annotated[
        list[str] | None,
        typer.Option(
            "--scheduler",
            help="fixed|deadline|adaptive|schedule, 'adaptive:0.4', or an inline YAML mapping "
            "(repeatable).",
        ),
    ] = None,
    avg_budget: Annotated[
        str | None, typer.Option(help="Adaptive scheduler's mean budget(s), comma-separated.")
    ] = None,
    deadline_ms: Annotated[
        str | None, typer.Option(help="Deadline scheduler's deadline(s) in ms, comma-separated.")
    ] = None,
    signal: Annotated[
        str, typer.Option(help="Adaptive scheduler's hardness signal: action, obs or margin.")
    ] = "action",
    sweep: Annotated[
        bool,
        typer.Option(
            help="Budgets 1,0.75,0.5,0.25 + adaptive at --avg-budget (default 0.3,0.4,0.5); "
            "writes the success-vs-MACs table and plot into the run directory."
        ),
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Parallel env processes.")] = 2,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the first episode.")] = 10_000,
    checkpoint: Annotated[str, typer.Option(help="'best', 'last' or a directory.")] = "best",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a success-vs-mean-MACs plot (PNG).")
    ] = None,
    video: Annotated[Path | None, typer.Option(help="Write an MP4 of one episode.")] = None,
) -> None:
    """Evaluate a trained policy in simulation at fixed budgets and/or with schedulers.

    Every row plays the same episodes; the table gives success, return, mean budget and
    mean executed MACs per step (what the success-vs-compute trade-off is plotted from).
    """
    import json

    from swan_policy.config import load_config
    from swan_policy.evaluate import EnvWorkerError, evaluate_policy, plot_tradeoff, record_video

    if sweep:
        budgets = budgets or "1,0.75,0.5,0.25"
        if "adaptive" not in [s.strip() for s in scheduler or []]:  # no duplicate rows
            scheduler = [*(scheduler or []), "adaptive"]
        avg_budget = avg_budget or "0.3,0.4,0.5"
        json_out = json_out or run / "eval_sweep.json"
        plot = plot or run / "eval_sweep.png"
    specs = parse_schedulers(scheduler, avg_budget, deadline_ms, signal)
    if budgets is None and (not specs or "fixed" in (scheduler or [])):
        budgets = "1,0.5,0.25"
    levels = parse_budgets(budgets) if budgets is not None else []
    if not run.is_dir():
        raise UserError(f"--run: {run} is not a run directory")
    if not (run / "config.yaml").is_file():
        raise UserError(f"--run: {run} has no config.yaml (not a run directory)")
    # outputs are written after the whole evaluation: refuse a bad path before it
    for path, flag, suffix in ((json_out, "--json", None), (plot, "--plot", ".png")):
        if path is not None:
            check_output_path(path, flag, suffix)
    if video is not None:
        check_output_path(video, "--video", ".mp4")
    cfg = load_config(run / "config.yaml")
    policy = load_run_policy(run, checkpoint)

    from rich.progress import Progress

    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("evaluating", total=episodes * (len(levels) + len(specs)))
            results = evaluate_policy(
                policy,
                cfg.env,
                episodes,
                levels,
                workers,
                seed,
                on_episode=lambda _: progress.advance(task),
                schedulers=specs,
            )
    except EnvWorkerError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print(
            "error: interrupted (Ctrl-C): evaluation stopped, nothing written",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(130) from None
    dense = policy.dense_macs()
    table = Table(title=f"{run.name}: {episodes} episodes per row, {cfg.env.id}")
    table.add_column("budget", justify="right", no_wrap=True)
    for col in ("success", "return", "length", "mean b", "active", "MMACs/step", "of dense"):
        table.add_column(col, justify="right")
    for r in results:
        active = sum(r.active_fraction.values()) / max(len(r.active_fraction), 1)
        table.add_row(
            f"{r.budget:g}" if r.scheduler is None else r.label,
            f"{r.success_rate:.0%}",
            f"{r.return_mean:.2f} ± {r.return_std:.2f}",
            f"{r.length_mean:.1f}",
            f"{r.mean_budget:.2f}",
            f"{active:.2f}",
            f"{r.macs_per_step / 1e6:.3f}",
            f"{r.macs_per_step / dense:.0%}",
        )
    console.print(table)
    if json_out is not None:
        payload = {
            "run": str(run),
            "env": cfg.env.id,
            "episodes": episodes,
            "seed": seed,
            "dense_macs": dense,
            "results": [r.to_json() for r in results],
        }
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(payload, indent=2))
        except OSError as e:
            raise UserError(f"--json: cannot write {json_out}: {e.strerror or e}") from None
        console.print(f"wrote {json_out}")
    if plot is not None:
        try:
            plot_tradeoff(results, dense, plot, f"{run.name} ({cfg.env.id}, {episodes} episodes)")
        except OSError as e:
            raise UserError(f"--plot: cannot write {plot}: {e.strerror or e}") from None
        console.print(f"wrote {plot}")
    if video is not None:
        b = levels[0] if levels else 1.0
        try:
            n = record_video(policy, cfg.env, video, seed, b)
        except OSError as e:
            raise UserError(f"--video: cannot write {video}: {e.strerror or e}") from None
        except ValueError as e:  # the env renders no frames
            raise UserError(f"--video: {e}") from None
        console.print(f"wrote {video} ({n} frames, budget {b:g})")
