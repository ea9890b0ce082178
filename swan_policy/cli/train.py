"""``swan info``, ``swan demos`` and ``swan train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from swan_policy.cli._app import (
    UserError,
    _parse_kwargs,
    app,
    console,
    parse_budgets,
    resolved_policy_config,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config in configs/.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Dotted override, e.g. --set policy.gate.tau=0.5 (repeatable)."),
]


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
    pc = resolved_policy_config(cfg)
    torch.manual_seed(cfg.seed)
    policy = SwanPolicy(pc).eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    obs = {"proprio": torch.randn(batch, policy.proprio_dim, generator=gen)}
    if policy.image_hw is not None and policy.image_channels is not None:
        obs["pixels"] = torch.randint(
            0,
            256,
            (batch, *policy.image_hw, policy.image_channels),
            generator=gen,
            dtype=torch.uint8,
        )
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


@app.command()
def demos(
    task: Annotated[str, typer.Option(help="Gymnasium id, e.g. swan_envs/Reach-v0.")],
    out: Annotated[Path, typer.Option(help="HDF5 file to write (robomimic layout).")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to collect.")] = 200,
    workers: Annotated[int, typer.Option(min=1, help="Parallel env processes.")] = 2,
    seed: Annotated[int, typer.Option(min=0, help="Seed of episode 0 (episode i: seed+i).")] = 0,
    env_kwarg: Annotated[
        list[str] | None, typer.Option("--env-kwarg", help="gym.make kwarg, e.g. variation=hard.")
    ] = None,
    only_success: Annotated[bool, typer.Option(help="Keep only successful episodes.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Collect scripted-expert demonstrations into an HDF5 file."""
    import gymnasium as gym

    from swan_policy.data.demos import collect_demos
    from swan_policy.envs import ensure_registered

    if out.exists() and not overwrite:
        raise UserError(f"--out: {out} exists (pass --overwrite to replace it)")
    env_kwargs = _parse_kwargs(env_kwarg, "--env-kwarg")
    ensure_registered(task)
    try:  # an unknown id: one line now, not a traceback from every worker later
        gym.spec(task)
    except gym.error.Error as e:
        raise UserError(f"--task: {e}") from None
    try:
        stats = collect_demos(
            task,
            episodes,
            out,
            workers=workers,
            seed=seed,
            env_kwargs=env_kwargs,
            progress=True,
            only_success=only_success,
            overwrite=overwrite,
        )
    except (OSError, RuntimeError) as e:  # a worker's traceback: its first and last lines
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [repr(e)]
        one = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
        raise UserError(one) from None
    console.print(f"wrote {out}: {stats}")


@app.command()
def train(
    config: ConfigOpt,
    overrides: SetOpt = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Output directory (default runs/<name>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    n_envs: Annotated[
        int | None,
        typer.Option("--n-envs", min=1, help="RL: parallel envs (SubprocVecEnv); sets rl.n_envs."),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Train a gated policy: imitation (bc, dagger), RL with SB3 (ppo, sac), or
    teacher -> pixel-student distillation (distill), as the config's method says."""
    from swan_policy.config import load_config
    from swan_policy.train.checkpoint import latest_checkpoint
    from swan_policy.train.runtime import TrainingError, TrainingInterrupted

    cfg = load_config(config, [*(overrides or []), *([f"rl.n_envs={n_envs}"] if n_envs else [])])
    out = run_dir or Path("runs") / cfg.name
    if out.exists() and not out.is_dir():
        raise UserError(f"--run-dir: {out} exists and is not a directory")
    if resume:
        # distill: the teacher's run (out/teacher) may hold the only checkpoint so far
        teacher = out / "teacher" if cfg.method == "distill" else None
        if latest_checkpoint(out) is None and (
            teacher is None or latest_checkpoint(teacher) is None
        ):
            raise UserError(f"--resume: {out} has no checkpoint to resume from")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"run directory {out} exists (pass --resume, or another --run-dir)")
    try:
        if cfg.method in ("ppo", "sac"):
            from swan_policy.train.rl_run import train_rl

            final = train_rl(cfg, out, resume=resume, show=not quiet)
        elif cfg.method == "distill":
            from swan_policy.train.rl_run import train_distill

            final = train_distill(cfg, out, resume=resume, show=not quiet)
        else:
            from swan_policy.train.imitation import train as train_imitation

            final = train_imitation(cfg, out, resume=resume, show=not quiet)
    except TrainingInterrupted:
        raise typer.Exit(130) from None
    except TrainingError as e:
        raise UserError(str(e)) from None
    console.print(f"done: {final}")
