"""The ``swan`` typer app, its consoles, user errors and the helpers its commands share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

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


def _not_yet(verb: str, issue: str) -> None:
    raise UserError(f"`swan {verb}` is not available yet ({issue})")


def _parse_kwargs(items: list[str] | None, flag: str) -> dict[str, object]:
    import yaml

    from swan_policy.config import _yaml_problem, parse_yaml

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag}: expected key=value, got {item!r}")
        try:  # the config files' YAML rules: 1e-3 is a float, 2024-05-01 a string
            out[key] = parse_yaml(raw)
        except yaml.YAMLError as e:
            raise UserError(f"{flag}: cannot parse {item!r}: {_yaml_problem(e)}") from None
        except (ValueError, RecursionError) as e:
            raise UserError(f"{flag}: cannot parse {item!r}: {e}") from None
    return out


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
