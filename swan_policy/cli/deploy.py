"""``swan compact``, ``swan export`` and ``swan deploy``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from swan_policy.cli._app import UserError, app, console, load_run_policy, parse_budgets


@app.command()
def compact(
    run: Annotated[Path, typer.Option(help="A run directory written by swan train.")],
    calib_episodes: Annotated[
        int, typer.Option(min=1, help="Calibration rollouts (gate statistics).")
    ] = 20,
    threshold: Annotated[
        float,
        typer.Option(
            help="Also remove units active in at most this fraction of samples (0: exact)."
        ),
    ] = 0.0,
    out: Annotated[
        Path | None, typer.Option(help="Output policy directory (default <run>/compact).")
    ] = None,
    heldout_episodes: Annotated[
        int, typer.Option(min=1, help="Held-out rollouts for parity and success.")
    ] = 10,
    checkpoint: Annotated[str, typer.Option(help="'best', 'last' or a directory.")] = "best",
    workers: Annotated[int, typer.Option(min=1, help="Parallel env processes.")] = 2,
    calib_seed: Annotated[
        int, typer.Option(min=0, help="Seed of the first calibration episode.")
    ] = 20_000,
    heldout_seed: Annotated[
        int, typer.Option(min=0, help="Seed of the first held-out episode.")
    ] = 30_000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Compact a trained policy into a smaller one, and report what it cost.

    Calibration rollouts count how often each unit is active; units never active are
    removed (exactly), gates whose units were always active are folded away, and with
    --threshold t > 0 units active in at most a fraction t of the samples are removed
    too. Held-out rollouts check parity (max |action difference|, which must stay
    <= 1e-5 at threshold 0) and success before/after. Writes the compact policy
    (save_pretrained) and compaction.json to --out.
    """
    import json

    from swan_policy.compact import compact_with_report
    from swan_policy.config import load_config

    if not 0.0 <= threshold < 1.0:
        raise UserError(f"--threshold: must be in [0, 1), got {threshold:g}")
    if not run.is_dir():
        raise UserError(f"--run: {run} is not a run directory")
    out = out or run / "compact"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out: {out} exists and is not empty (pass --overwrite to replace it)")
    cfg = load_config(run / "config.yaml")
    policy = load_run_policy(run, checkpoint)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(
            "calibrating + held-out rollouts", total=calib_episodes + 2 * heldout_episodes
        )
        compacted, report = compact_with_report(
            policy,
            cfg.env,
            calib_episodes,
            threshold,
            heldout_episodes,
            workers,
            calib_seed,
            heldout_seed,
            on_episode=lambda _: progress.advance(task),
        )
    table = Table(title=f"{run.name}: compaction (threshold {threshold:g})")
    table.add_column("layer", no_wrap=True)
    for col in ("units", "gate", "MMACs (graph)", "MMACs executed @1", "unseen"):
        table.add_column(col, justify="right")
    for layer in report.layers:
        units = f"{layer.units_before} -> {layer.units_after}" if layer.units_before else "-"
        table.add_row(
            layer.name,
            units,
            layer.gate_after if layer.units_before else "-",
            f"{layer.macs_before / 1e6:.3f} -> {layer.macs_after / 1e6:.3f}",
            f"{layer.executed_macs_before / 1e6:.3f} -> {layer.executed_macs_after / 1e6:.3f}",
            str(layer.unseen_units) if layer.units_before else "-",
        )
    table.add_row(
        "total",
        "",
        "",
        f"{report.macs_before / 1e6:.3f} -> {report.macs_after / 1e6:.3f}",
        f"{report.executed_macs_before / 1e6:.3f} -> {report.executed_macs_after / 1e6:.3f}",
        str(report.unseen_units),
        style="bold",
    )
    console.print(table)
    console.print(
        f"static graph: -{report.macs_reduction:.1%} MACs; parity: max |action diff| "
        f"{report.max_action_diff:.2e} over {report.heldout_steps} held-out states "
        f"({'exact' if report.exact else 'NOT exact'}); success on {report.heldout_episodes} "
        f"held-out episodes: {report.success_before:.0%} -> {report.success_after:.0%}"
    )
    if threshold == 0.0 and not report.exact:
        layers = ", ".join(f"{r.name} x{r.unseen_units}" for r in report.layers if r.unseen_units)
        raise UserError(
            f"compaction is not exact on held-out states (max |action diff| "
            f"{report.max_action_diff:.2e}, tolerance {report.tolerance:g}"
            + (f"; units active there but never in calibration: {layers}" if layers else "")
            + f"); nothing written -- rerun with more --calib-episodes (now {calib_episodes})"
        )
    folded = list(compacted.config.ungated)
    if folded:
        console.print(
            f"folded (no gate left, so they ignore budgets < 1): {', '.join(folded)}; the "
            "compact policy matches the original at budget 1 -- serve lower budgets with "
            "the budget ladder of the uncompacted run (swan export)"
        )
    if out.exists() and overwrite:
        import shutil

        shutil.rmtree(out)
    compacted.save_pretrained(out)
    payload = {"run": str(run), "checkpoint": checkpoint, "out": str(out), **report.to_json()}
    (out / "compaction.json").write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {out} (policy + compaction.json)")


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="A run directory written by swan train.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write, e.g. bundles/<name>.")],
    levels: Annotated[
        str, typer.Option(help="Budget levels of the ladder, comma-separated.")
    ] = "1,0.75,0.5,0.25",
    gated: Annotated[
        bool, typer.Option("--gated", help="Also export the full gated model (budget input).")
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also write int8 graphs; kept only if closed-loop success holds."
        ),
    ] = False,
    calib_episodes: Annotated[
        int, typer.Option(min=1, help="Calibration rollouts that rank the ladder's units.")
    ] = 20,
    eval_episodes: Annotated[
        int | None,
        typer.Option(
            min=0, help="Closed-loop episodes per level (default: 20 with --int8, else 0)."
        ),
    ] = None,
    gates: Annotated[
        str, typer.Option(help="Level graphs: 'folded' (plain dense) or 'kept' (gate masks).")
    ] = "folded",
    checkpoint: Annotated[str, typer.Option(help="'best', 'last' or a directory.")] = "best",
    workers: Annotated[int, typer.Option(min=1, help="Parallel env processes.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
    finetune: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Fine-tune each level by BC (on what --finetune-data names) for this "
            "fraction of the run's training steps before exporting it (0: ship the levels "
            "as cut). Imitation runs only.",
        ),
    ] = 0.0,
    finetune_lr_scale: Annotated[
        float, typer.Option(help="Fine-tuning lr / the run's lr (> 0).")
    ] = 0.3,
    finetune_data: Annotated[
        str,
        typer.Option(
            help="What --finetune trains on: 'run' (the demos plus the run's DAgger rounds: "
            "states its own policy visited) or 'demos' (the demo file alone)."
        ),
    ] = "run",
) -> None:
    """Export a trained run to an ONNX bundle: one verified dense graph per budget level."""
    import json

    from swan_policy.config import load_config
    from swan_policy.export.onnx import ExportError
    from swan_policy.export.pipeline import export_run

    ladder_levels = parse_budgets(levels)
    if gates not in ("folded", "kept"):
        raise UserError(f"--gates: expected 'folded' or 'kept', got {gates!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out: {out} exists (pass --overwrite to replace it)")
    episodes = eval_episodes if eval_episodes is not None else (20 if int8 else 0)
    if not (run / "config.yaml").is_file():
        raise UserError(f"--run: {run} has no config.yaml (not a run directory)")
    cfg = load_config(run / "config.yaml")
    policy = load_run_policy(run, checkpoint)
    try:
        report, summary = export_run(
            policy,
            cfg,
            run,
            out,
            levels=ladder_levels,
            gates=gates,  # type: ignore[arg-type]  # str, checked above to be folded|kept
            gated=gated,
            int8=int8,
            calib_episodes=calib_episodes,
            eval_episodes=episodes,
            workers=workers,
            overwrite=overwrite,
            finetune=finetune,
            finetune_lr_scale=finetune_lr_scale,
            finetune_data=finetune_data,  # type: ignore[arg-type]  # checked by export_run
            log=lambda m: console.print(m, highlight=False),
            on_level=lambda r: console.print(
                f"level {r.budget:g}: exported, checker + parity ok", highlight=False
            ),
        )
    except ExportError as e:
        raise UserError(f"export verification failed: {e}") from None
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    closed = summary["closed_loop"] or {}
    q8 = summary["int8"] or {}
    table = Table(title=f"{out}: {len(report.levels)} levels, gates {report.gates}")
    for col in ("level", "units per layer", "MMACs", "of full", "KB", "parity max |diff|"):
        table.add_column(col, justify="right", overflow="fold")
    tuned = summary["finetuned"] or {}
    if tuned:
        table.add_column("fine-tuned", justify="right")
    if closed:
        table.add_column(f"success ({episodes} ep)", justify="right")
        table.add_column("p50 ms", justify="right")
    if q8:
        table.add_column("int8", justify="right")
    for r in report.levels:
        row = [
            f"{r.budget:g}",
            "/".join(str(n) for n in r.units.values()),
            f"{r.macs / 1e6:.3f}",
            f"{r.macs / report.full_macs:.0%}",
            f"{r.bytes / 1024:.0f}",
            f"{max(r.parity.values()):.1e}",
        ]
        if tuned:
            t = tuned.get(f"{r.budget:g}")
            row.append("-" if t is None else f"{t['steps']} steps")
        if closed:
            c = closed[f"{r.budget:g}"]
            row += [f"{c['success_rate']:.0%}", f"{c['p50_ms']:.3f}"]
        if q8:
            v = q8[f"{r.budget:g}"]
            row.append(f"{'kept' if v['kept'] else 'dropped'} ({v['success_rate']:.0%})")
        table.add_row(*row)
    console.print(table)
    if not tuned and cfg.method not in ("ppo", "sac") and any(r.budget < 1 for r in report.levels):
        console.print(
            "note: levels below 1 are static cuts (the same units for every input), not "
            "fine-tuned; with a 1024-unit head level 0.25 fell to 6% where the gated policy "
            "scored 94%. --finetune 0.25 fine-tunes each level on the run's demos and DAgger "
            "rounds (docs/results.md, issue 7).",
            highlight=False,
        )
    if report.gated is not None:
        worst = max(report.gated["parity_max_abs_diff"].values())
        console.print(f"gated.onnx (budget input): parity max |diff| {worst:.1e}")
    console.print(
        f"wrote {out} ({len(report.levels)} graphs, bundle.json, ladder.json); "
        f"parity asserted at atol {report.manifest['parity_atol']:g} on random, edge and "
        f"real observations, batch 1 and 16"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"manifest": report.manifest, **summary}, indent=2))
        console.print(f"wrote {json_out}")


@app.command()
def deploy(
    bundle: Annotated[Path, typer.Option(help="A bundle directory written by swan export.")],
    task: Annotated[str, typer.Option(help="Gymnasium id, e.g. swan_envs/Reach-v0.")],
    rate: Annotated[float, typer.Option(min=0, help="Control rate in Hz (0: free-run).")] = 50.0,
    deadline_ms: Annotated[
        float | None, typer.Option(help="Policy deadline per step in ms (misses are counted).")
    ] = None,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to run.")] = 20,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="fixed:<b>, deadline:<ms>, adaptive:<avg> (default: deadline:<deadline>)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the first episode.")] = 10_000,
    precision: Annotated[
        str, typer.Option(help="fp32, or int8 where the export kept it.")
    ] = "fp32",
    env_kwarg: Annotated[
        list[str] | None, typer.Option("--env-kwarg", help="gym.make kwarg, e.g. variation=hard.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Run a bundle in a fixed-rate control loop against the simulator, in a torch-free process.

    The loop (``python -m swan_policy.deploy.loop``) blocks ``import torch``; it reports
    success, latency percentiles per level, deadline misses and the mean budget.
    """
    import json
    import math
    import subprocess
    import tempfile

    if precision not in ("fp32", "int8"):
        raise UserError(f"--precision: expected 'fp32' or 'int8', got {precision!r}")
    if not math.isfinite(rate):
        raise UserError(f"--rate: must be a finite number >= 0, got {rate}")
    if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
        raise UserError(f"--deadline-ms: must be a finite number > 0, got {deadline_ms}")
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "deploy.json"
        cmd = [sys.executable, "-m", "swan_policy.deploy.loop", "--bundle", str(bundle)]
        cmd += ["--task", task, "--rate", str(rate), "--episodes", str(episodes)]
        cmd += ["--seed", str(seed), "--precision", precision, "--json", str(result)]
        if deadline_ms is not None:
            cmd += ["--deadline-ms", str(deadline_ms)]
        if scheduler is not None:
            cmd += ["--scheduler", scheduler]
        for item in env_kwarg or []:
            cmd += ["--env-kwarg", item]
        proc = subprocess.run(cmd, check=False)  # noqa: S603 (our own module, no shell)
        if proc.returncode == 2:  # the loop printed its one-line error
            raise typer.Exit(2)
        if proc.returncode != 0 or not result.is_file():
            raise UserError(f"the deploy loop failed (exit status {proc.returncode})")
        data = json.loads(result.read_text())
    _print_deploy(data, bundle, task)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=2))
        console.print(f"wrote {json_out}")


def _print_deploy(data: dict[str, object], bundle: Path, task: str) -> None:
    """Rich tables of a deploy loop's summary."""
    lat = data["latency"]
    assert isinstance(lat, dict)
    head = Table(title=f"{bundle} on {task}: {data['episodes']} episodes at {data['rate_hz']} Hz")
    for col in ("success", "steps", "mean budget", "deadline ms", "deadline misses", "overruns"):
        head.add_column(col, justify="right")
    head.add_row(
        f"{data['success_rate']:.0%}",
        str(data["steps"]),
        f"{data['mean_budget']:.2f}",
        str(data["deadline_ms"]),
        str(data["deadline_misses"]),
        str(data["period_overruns"]),
    )
    console.print(head)
    table = Table(title="latency per step (validation + scheduling + onnxruntime), ms")
    for col in ("level", "steps", "p50", "p99", "max", "misses"):
        table.add_column(col, justify="right")
    rows = [*lat["levels"].items(), ("all", lat["overall"])]
    for name, s in rows:
        if not s.get("steps"):
            table.add_row(name, "0", "-", "-", "-", "-")
            continue
        table.add_row(
            name,
            str(s["steps"]),
            f"{s['p50_ms']:.3f}",
            f"{s['p99_ms']:.3f}",
            f"{s['max_ms']:.3f}",
            str(s["deadline_misses"]),
        )
    console.print(table)
    console.print(f"torch imported by the loop: {data.get('torch_imported')}")
