"""The ``swan`` command: ``swan <verb> --config configs/x.yaml --set a.b=value``.

User mistakes (bad config, bad flag, missing file) print one ``error: ...`` line on
stderr and exit with status 2 -- never a traceback. Verbs that later issues fill are
registered now and say so.
"""

from __future__ import annotations

import sys

import typer

# importing the command modules registers their commands on ``app``, in this order (the
# order of ``swan --help``)
# isort: off
from swan_policy.cli import train  # noqa: F401  (info, demos, train)
from swan_policy.cli import evaluate  # noqa: F401  (eval)
from swan_policy.cli import deploy  # noqa: F401  (compact, export, deploy)
from swan_policy.cli import inspect  # noqa: F401  (inspect)

# isort: on
from swan_policy.cli._app import (
    UserError,
    _user_error_types,
    app,
    console,
    err_console,
    load_run_policy,
    parse_budgets,
    resolved_policy_config,
)
from swan_policy.cli.evaluate import parse_schedulers

__all__ = [
    "UserError",
    "app",
    "console",
    "err_console",
    "load_run_policy",
    "main",
    "parse_budgets",
    "parse_schedulers",
    "resolved_policy_config",
]


def _is_env_fault(error: BaseException) -> bool:
    """Whether ``error`` is the rollout engine's :class:`~swan_policy.evaluate.EnvWorkerError`
    (looked up only if that module is loaded: ``swan deploy`` never imports torch)."""
    module = sys.modules.get("swan_policy.evaluate")
    return module is not None and isinstance(error, module.EnvWorkerError)


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
    except RuntimeError as e:
        if not _is_env_fault(e):
            raise
        # an env raised, or an env worker died, in a rollout (eval, compact, export, DAgger)
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 1
    return code if isinstance(code, int) else 0  # typer.Exit(n) comes back as n
