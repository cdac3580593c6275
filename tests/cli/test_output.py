"""A seqctr command shows seqctr's lines; Ray's own logs go to the session's log folder (--verbose: back)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from typer.testing import CliRunner

from seqctr.cli.main import app
from seqctr.platform import runtime


@pytest.fixture
def clean_ray_loggers(monkeypatch):
    """Undo quiet_ray_logs: handler levels, the driver-log handler, the warnings hook, Ray Data's config."""
    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    saved = {
        name: (list(logging.getLogger(name).handlers), [h.level for h in logging.getLogger(name).handlers])
        for name in runtime.RAY_LOGGERS
    }
    shown = warnings.showwarning
    yield
    for name, (handlers, levels) in saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)
    warnings.showwarning = shown


def test_ray_records_below_error_go_to_the_driver_log_not_the_terminal(tmp_path, clean_ray_loggers):
    import ray.data  # noqa: F401 - configures the ray.data logger as a command would

    path = runtime.quiet_ray_logs(tmp_path)
    assert runtime.quiet_ray_logs(tmp_path) == path  # a second init adds no second handler
    terminal = [
        h for name in runtime.RAY_LOGGERS for h in logging.getLogger(name).handlers if runtime._is_terminal_handler(h)
    ]
    assert terminal and all(h.level == logging.ERROR for h in terminal)  # only errors reach the terminal
    logging.getLogger("ray.train").info("Requesting resources: {'CPU': 1.0}")
    logging.getLogger("ray").warning("8 PYTHON worker processes have been started")
    logging.getLogger("ray.tune").error("a real error")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("`concurrency` is deprecated", DeprecationWarning, stacklevel=1)
    for handler in logging.getLogger("ray").handlers:
        handler.flush()
    log = path.read_text()
    assert "Requesting resources" in log and "PYTHON worker processes" in log and "a real error" in log
    assert "DeprecationWarning: `concurrency` is deprecated" in log
    assert sum(runtime._is_seqctr_handler(h) for h in logging.getLogger("ray").handlers) == 1


def test_ray_data_reapplying_its_logging_config_stays_quiet(tmp_path, clean_ray_loggers):
    """Ray Data rebuilds its logger from RAY_DATA_LOGGING_CONFIG per new dataset in the driver (console at INFO by
    default: "Estimated parquet encoding ratio" lines in a user's terminal); the config seqctr points it at keeps
    the console to errors and sends the rest to the driver log."""
    import ray.data._internal.logging as ray_data_logging  # the function Ray Data itself calls per dataset

    path = runtime.quiet_ray_logs(tmp_path)
    try:
        ray_data_logging.configure_logging()
        logger = logging.getLogger("ray.data")
        terminal = [h for h in logger.handlers if runtime._is_terminal_handler(h)]
        assert terminal and all(h.level == logging.ERROR for h in terminal)
        logger.info("Estimated parquet encoding ratio is 1.610.")
        for handler in logging.getLogger("ray").handlers:
            handler.flush()
        assert "Estimated parquet encoding ratio" in path.read_text()
    finally:
        os.environ.pop("RAY_DATA_LOGGING_CONFIG", None)
        ray_data_logging.configure_logging()  # Ray Data's default config again, for the rest of the session


def test_ray_data_hidden_records_stay_off_the_terminal_and_a_new_session_gets_its_own_config(
    tmp_path, clean_ray_loggers, capsys
):
    """Ray Data logs a failing UDF's full stack trace at ERROR marked hidden (for its log file only): the
    console keeps Ray Data's filter for it. A later init in another session folder rewrites the config."""
    import ray.data._internal.logging as ray_data_logging

    runtime.quiet_ray_logs(tmp_path / "first")
    try:
        runtime.quiet_ray_logs(tmp_path / "second")  # seqctr's own setting is not mistaken for a user's
        assert os.environ["RAY_DATA_LOGGING_CONFIG"] == str(tmp_path / "second" / "seqctr-ray-data-logging.json")
        ray_data_logging.configure_logging()
        logger = logging.getLogger("ray.data")
        logger.error("Full stack trace: a hidden one", extra={"hide": True})
        logger.error("a real error")
        err = capsys.readouterr().err
        assert "a real error" in err and "Full stack trace" not in err
    finally:
        os.environ.pop("RAY_DATA_LOGGING_CONFIG", None)
        ray_data_logging.configure_logging()


def test_a_users_own_ray_data_logging_config_wins(tmp_path, clean_ray_loggers, monkeypatch):
    monkeypatch.setenv("RAY_DATA_LOGGING_CONFIG", str(tmp_path / "mine.yaml"))
    runtime.quiet_ray_logs(tmp_path)
    assert os.environ["RAY_DATA_LOGGING_CONFIG"] == str(tmp_path / "mine.yaml")


def test_verbose_flag_sets_the_switch_init_ray_reads(monkeypatch):
    # setenv (not delenv) records the variable's state even when it is absent, so teardown removes the "1"
    # the command sets; a leaked "1" would make every later CLI subprocess of the session verbose.
    monkeypatch.setenv(runtime.VERBOSE_ENV, "")
    assert not runtime.verbose()
    result = CliRunner().invoke(app, ["--verbose", "config", "show"])
    assert result.exit_code == 0, result.output
    assert runtime.verbose()


NATIVE = "[2026-12-02 01:05:06,656 E 15284 15284] core_worker.cc:2465: Actor with class name: 'X' has ..."


def test_native_stderr_lines_go_to_the_log_and_python_stderr_stays_in_order(tmp_path):
    """A subprocess: the filter owns file descriptor 2, which a test runner must keep."""
    log = tmp_path / "driver.log"
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from seqctr.platform.runtime import quiet_native_stderr
        quiet_native_stderr(Path({str(log)!r}))
        os.write(2, {NATIVE!r}.encode() + b"\\n")       # Ray's C++ core, straight to the descriptor
        os.write(2, b"a C library's own line\\n")
        print("[seqctr] stage 1/4", flush=True)
        print("error: no such file", file=sys.stderr)
        print("[seqctr] done", flush=True)
        sys.exit(2)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ}
    )
    assert done.returncode == 2
    assert NATIVE not in done.stderr
    assert "a C library's own line" in done.stderr and "error: no such file" in done.stderr
    assert done.stdout.splitlines() == ["[seqctr] stage 1/4", "[seqctr] done"]
    assert log.read_text().splitlines() == [NATIVE]


def test_help_names_the_verbose_flag():
    result = CliRunner().invoke(app, ["--help"])
    assert "--verbose" in result.output
