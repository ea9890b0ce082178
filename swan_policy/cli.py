"""The ``swan`` command: ``swan <verb> --config configs/x.yaml --set a.b=value``.

User mistakes (bad config, bad flag, missing file) print one ``error: ...`` line on
stderr and exit with status 2 -- never a traceback. Verbs that later issues fill are
registered now and say so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from swan_policy import __version__

if TYPE_CHECKING:
    from swan_policy.config import ExperimentConfig, PolicyConfig
    from swan_policy.policy import SwanPolicy

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
    from swan_policy.data.demos import DemoFileError
    from swan_policy.envs import SpaceMismatchError
    from swan_policy.serialization import CheckpointError
    from swan_policy.spec import ObservationError

    return (
        UserError,
        ConfigError,
        CheckpointError,
        ObservationError,
        SpaceMismatchError,
        DemoFileError,
        FileNotFoundError,
    )


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


def resolved_policy_config(cfg: ExperimentConfig) -> PolicyConfig:
    """The config's policy with dims taken from its env where they are not set."""
    from swan_policy.envs import make_env, resolve_policy_config

    pc = cfg.policy
    dims: list[object] = [pc.proprio_dim, pc.action_dim]
    if pc.pixels:
        dims += [pc.image_hw, pc.image_channels]
    if any(d is None for d in dims):
        try:
            env = make_env(cfg.env)
        except ValueError as e:
            raise UserError(str(e)) from None
        try:
            pc = resolve_policy_config(pc, env)
        finally:
            env.close()
    return pc


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


def _not_yet(verb: str, issue: str) -> None:
    raise UserError(f"`swan {verb}` is not available yet ({issue})")


def _parse_kwargs(items: list[str] | None, flag: str) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag}: expected key=value, got {item!r}")
        out[key] = yaml.safe_load(raw)
    return out


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
    from swan_policy.data.demos import collect_demos
    from swan_policy.envs import ensure_registered

    if out.exists() and not overwrite:
        raise UserError(f"--out: {out} exists (pass --overwrite to replace it)")
    ensure_registered(task)
    try:
        stats = collect_demos(
            task,
            episodes,
            out,
            workers=workers,
            seed=seed,
            env_kwargs=_parse_kwargs(env_kwarg, "--env-kwarg"),
            progress=True,
            only_success=only_success,
            overwrite=overwrite,
        )
    except (FileExistsError, RuntimeError) as e:
        raise UserError(str(e)) from None
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
    from swan_policy.train.imitation import TrainingError, TrainingInterrupted

    cfg = load_config(config, [*(overrides or []), *([f"rl.n_envs={n_envs}"] if n_envs else [])])
    out = run_dir or Path("runs") / cfg.name
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

    def numbers(text: str | None, flag: str) -> list[float]:
        if text is None:
            return []
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
        if not values:
            raise UserError(f"{flag}: expected at least one number")
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
                spec = yaml.safe_load(name)
            except yaml.YAMLError:
                raise UserError(f"--scheduler: cannot parse {name!r} as a YAML mapping") from None
            specs.append(spec)
        else:
            specs.append(name)
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
    from swan_policy.evaluate import evaluate_policy, plot_tradeoff, record_video

    if sweep:
        budgets = budgets or "1,0.75,0.5,0.25"
        scheduler = [*(scheduler or []), "adaptive"]
        avg_budget = avg_budget or "0.3,0.4,0.5"
        json_out = json_out or run / "eval_sweep.json"
        plot = plot or run / "eval_sweep.png"
    specs = parse_schedulers(scheduler, avg_budget, deadline_ms, signal)
    if budgets is None and (not specs or "fixed" in (scheduler or [])):
        budgets = "1,0.5,0.25"
    levels = parse_budgets(budgets) if budgets is not None else []
    cfg = load_config(run / "config.yaml")
    policy = load_run_policy(run, checkpoint)

    from rich.progress import Progress

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
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "run": str(run),
            "env": cfg.env.id,
            "episodes": episodes,
            "seed": seed,
            "dense_macs": dense,
            "results": [r.to_json() for r in results],
        }
        json_out.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")
    if plot is not None:
        plot_tradeoff(results, dense, plot, f"{run.name} ({cfg.env.id}, {episodes} episodes)")
        console.print(f"wrote {plot}")
    if video is not None:
        b = levels[0] if levels else 1.0
        n = record_video(policy, cfg.env, video, seed, b)
        console.print(f"wrote {video} ({n} frames, budget {b:g})")


def load_run_policy(run: Path, which: str = "best") -> SwanPolicy:
    """The policy of a run: ``best`` (falls back to ``last``), ``last``, or a directory."""
    from swan_policy.policy import SwanPolicy
    from swan_policy.train.checkpoint import latest_checkpoint

    if not run.is_dir():
        raise UserError(f"--run: {run} is not a run directory")
    if which not in ("best", "last"):
        return SwanPolicy.from_pretrained(Path(which))
    if which == "best" and (run / "best").is_dir():
        return SwanPolicy.from_pretrained(run / "best")
    last = latest_checkpoint(run)
    if last is None:
        raise UserError(f"--run: {run} has no checkpoint")
    return SwanPolicy.from_pretrained(last)


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
        if closed:
            c = closed[f"{r.budget:g}"]
            row += [f"{c['success_rate']:.0%}", f"{c['p50_ms']:.3f}"]
        if q8:
            v = q8[f"{r.budget:g}"]
            row.append(f"{'kept' if v['kept'] else 'dropped'} ({v['success_rate']:.0%})")
        table.add_row(*row)
    console.print(table)
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
    import subprocess
    import tempfile

    if precision not in ("fp32", "int8"):
        raise UserError(f"--precision: expected 'fp32' or 'int8', got {precision!r}")
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
    if not (run / "config.yaml").is_file():
        raise UserError(f"--run: {run} has no config.yaml (not a run directory)")
    out = out or run / "inspect"
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"--out: {out} exists and is not empty (pass --overwrite to replace it)"
            )
        if run.resolve().is_relative_to(out.resolve()):
            raise UserError(f"--out: {out} holds the run {run}; refusing to replace it")
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
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``swan`` console script; returns the exit status."""
    try:
        code = app(args=argv, standalone_mode=False)
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
    return code if isinstance(code, int) else 0  # typer.Exit(n) comes back as n


if __name__ == "__main__":
    sys.exit(main())
