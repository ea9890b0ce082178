"""``swan inspect``: what the gates learned, per unit and task phase."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from swan_policy.cli._app import UserError, app, console, err_console, load_run_policy
from swan_policy.cli.evaluate import check_output_path, parse_schedulers


@app.command(name="inspect")
def inspect_gates(
    run: Annotated[Path, typer.Option(help="A run directory written by swan train.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to trace.")] = 3,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default <run>/inspect).")
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="Fixed budget of every step (default 1).")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Per-step budgets instead: 'adaptive:0.4', 'deadline:5', 'fixed:0.5' or an "
            "inline YAML mapping, as swan eval --scheduler takes."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the first episode.")] = 10_000,
    checkpoint: Annotated[str, typer.Option(help="'best', 'last' or a directory.")] = "best",
    video: Annotated[bool, typer.Option(help="Write an MP4 per episode.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Show what the gates learned: per-unit activity over episodes, by task phase.

    Plays --episodes episodes (episode j from seed --seed + j) in this process and
    writes to --out, per episode j: epJ_gates.png (units x time steps per layer),
    epJ_phases.png (active fraction per layer over time, the expert's task phases
    shaded, the budget), epJ.mp4 (camera beside a live gate strip; not with
    --no-video) and epJ_trace.npz (the raw gates, budgets and phases); then
    summary.txt and summary.json over all episodes: per layer the units never active,
    always active and phase-specific (active in >= 90% of one phase's steps and
    <= 10% of every other phase's, phases with >= 5 steps), and the mean active
    fraction per phase.
    """
    import json
    import shutil

    from rich.progress import Progress, TaskID

    from swan_policy.budget.schedulers import Fixed, make_scheduler
    from swan_policy.config import load_config
    from swan_policy.envs import check_spaces
    from swan_policy.evaluate import scheduler_label
    from swan_policy.inspect import (
        expert_phases,
        make_inspect_env,
        plot_heatmap,
        plot_phases,
        summarise_gates,
        summary_text,
        trace_episode,
        write_video,
    )

    if budget is not None and scheduler is not None:
        raise UserError("--budget and --scheduler exclude each other (pass one)")
    b = 1.0 if budget is None else budget
    if not 0.0 < b <= 1.0:
        raise UserError(f"--budget: must be in (0, 1], got {b:g}")
    specs = parse_schedulers([scheduler], None, None, "action") if scheduler is not None else []
    if scheduler is not None and not specs:  # 'fixed' alone: the eval rows' marker
        raise UserError("--scheduler: 'fixed' needs a budget here: 'fixed:0.5' (or --budget 0.5)")
    if not (run / "config.yaml").is_file():
        raise UserError(f"--run: {run} has no config.yaml (not a run directory)")
    out = out or run / "inspect"
    check_output_path(out, "--out", is_dir=True)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"--out: {out} exists and is not empty (pass --overwrite to replace it)"
            )
        if run.resolve().is_relative_to(out.resolve()):
            raise UserError(f"--out: {out} holds the run {run}; refusing to replace it")
        # nor a part of the run (its checkpoints) or the policy directory being inspected
        kept = [run / "config.yaml", run / "best", run / "checkpoints"]
        kept += [] if checkpoint in ("best", "last") else [Path(checkpoint)]
        for path in kept:
            if path.exists() and path.resolve().is_relative_to(out.resolve()):
                raise UserError(f"--out: {out} holds {path}; refusing to replace it")
    cfg = load_config(run / "config.yaml")
    policy = load_run_policy(run, checkpoint)
    if not policy.gates():
        raise UserError(f"--run: the {checkpoint} policy of {run} has no gated layer")
    label = scheduler_label(specs[0]) if specs else f"budget {b:g}"
    try:
        env = make_inspect_env(cfg.env, render=video)
    except ValueError as e:
        raise UserError(str(e)) from None
    traces = []
    files: list[dict[str, str]] = []
    try:
        check_spaces(policy, env)  # before anything in --out is replaced
        try:
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"--out: cannot create {out}: {e.strerror or e}") from None
        limit = env.spec.max_episode_steps if env.spec is not None else None
        with Progress(console=console, transient=True) as progress:
            eps_task = progress.add_task("episodes", total=episodes)
            for j in range(episodes):
                steps = progress.add_task(f"episode {j} (seed {seed + j})", total=limit)
                sched = make_scheduler(specs[0]) if specs else Fixed(b, (b,))

                def advance(_: int, task: TaskID = steps) -> None:
                    progress.advance(task)

                try:
                    trace = trace_episode(
                        policy, env, seed + j, sched, frames=video, on_step=advance
                    )
                except ValueError as e:  # e.g. an env that renders no frames
                    raise UserError(str(e)) from None
                title = f"{run.name}, {label}, episode {j} (seed {seed + j})"
                written = {
                    "gates": plot_heatmap(trace, out / f"ep{j}_gates.png", title),
                    "phases": plot_phases(trace, out / f"ep{j}_phases.png", title),
                    "trace": trace.save_npz(out / f"ep{j}_trace.npz"),
                }
                if video:
                    progress.update(steps, description=f"episode {j}: writing video")
                    written["video"] = out / f"ep{j}.mp4"
                    write_video(trace, written["video"])
                trace.frames = None  # frames are large: keep only what the summary needs
                traces.append(trace)
                files.append({k: v.name for k, v in written.items()})
                progress.remove_task(steps)
                progress.advance(eps_task)
    except KeyboardInterrupt:
        err_console.print(
            f"error: interrupted (Ctrl-C) after {len(traces)} episode(s); "
            f"{out} holds their files, no summary written",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    finally:
        env.close()
    summary = summarise_gates(traces, known_phases=expert_phases(env))
    for entry, names in zip(summary["episodes"], files, strict=True):
        entry["files"] = names
    payload = {
        "run": str(run),
        "checkpoint": checkpoint,
        "env": cfg.env.id,
        "seed": seed,
        "budget": None if specs else b,
        "scheduler": specs[0] if specs else None,
        **summary,
    }
    (out / "summary.json").write_text(json.dumps(payload, indent=2))
    text = summary_text(summary, f"{run.name} ({cfg.env.id}), checkpoint {checkpoint}, {label}")
    (out / "summary.txt").write_text(text)
    table = Table(title=f"{run.name}: gates over {summary['steps']} steps ({label})")
    table.add_column("layer", no_wrap=True)
    for col in ("units", "mean active", *summary["phases"], "never", "always", "phase-specific"):
        table.add_column(col, justify="right")
    for name, s in summary["layers"].items():
        table.add_row(
            name,
            str(s["units"]),
            f"{s['mean_active_fraction']:.2f}",
            *[f"{f:.2f}" for f in s["active_fraction_per_phase"].values()],
            str(len(s["never_active"])),
            str(len(s["always_active"])),
            ", ".join(f"{p} {len(u)}" for p, u in s["phase_specific"].items()) or "-",
        )
    console.print(table)
    console.print(
        f"success {summary['success_rate']:.0%} over {episodes} episode(s), mean return "
        f"{summary['return_mean']:.2f}; wrote {out} (per-episode PNGs"
        + (", MP4s" if video else "")
        + ", traces, summary.txt, summary.json)",
        highlight=False,
    )
    if summary["unseen_phases"]:
        console.print(
            f"note: the expert's phase(s) {', '.join(summary['unseen_phases'])} never occurred "
            "(its phase follows its own state machine, which the policy need not trigger)",
            highlight=False,
        )
