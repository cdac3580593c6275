"""One rule for every CLI command: an expected failure is one red `error: ...` line and exit code 2.

Expected = the platform's own errors, which already name the file, column, field or key (bad config,
data, checkpoint, registry ref, job, missing path). Anything else is a bug and keeps its traceback.
The error classes are imported when a command fails, so `seqctr --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import typer


def expected_errors() -> tuple[type[BaseException], ...]:
    from seqctr.platform.config import ConfigError
    from seqctr.platform.data.contract import DataError
    from seqctr.platform.jobs import JobError
    from seqctr.platform.model.checkpoint import CheckpointError
    from seqctr.platform.registry import RegistryError

    return (ConfigError, DataError, CheckpointError, RegistryError, JobError, FileNotFoundError)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a typer command: expected errors exit 2 with one line, no traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not isinstance(err, expected_errors()):
                raise
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper
