"""Starting or joining Ray the same way everywhere (CLI, tests, jobs), quietly.

A seqctr command's output is seqctr's own lines (stages, progress, results). Ray's own chatter (worker
stdout/stderr, INFO banners, deprecation warnings, `core_worker` notices that look like errors and are
not) goes to the Ray session's log folder instead: worker output stays in Ray's `worker-*.out/err` files
(log_to_driver=False) and the driver's Ray log records and warnings go to `seqctr-driver.log` there.
`seqctr --verbose` (SEQCTR_VERBOSE=1) brings it all back to the terminal. Training progress reaches the
driver through a queue (training/trainer.py: ProgressPrinter), so it is printed once, verbose or not.

Ray Data's per-operator progress bars flood non-interactive logs (CI, Ray Jobs), so they are off unless
SEQCTR_PROGRESS_BARS=1.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

# Environment every Ray worker needs (local Ray, cluster jobs, tests): Train V2, no hub downloads, no
# tokenizer thread pools. (Ray Data's progress bars are turned off in each driver: quiet_ray_data.)
WORKER_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Ray 2.60's V2 Parquet datasource starts dozens of helper actors per read, which swamps a small
    # machine; the V1 reader is as fast for our file sizes.
    "RAY_DATA_USE_DATASOURCE_V2": "0",
}
VERBOSE_ENV = "SEQCTR_VERBOSE"
DRIVER_LOG = "seqctr-driver.log"
# Ray's Python loggers in the driver; children without handlers of their own propagate to "ray".
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
# A line of Ray's C++ core in this process: "[2026-01-02 03:04:05,678 E 123 456] core_worker.cc:...".
_NATIVE_LINE = re.compile(rb"^(\x1b\[[0-9;]*m)*\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")
_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"


def verbose() -> bool:
    """True when the user asked for Ray's own logs (`seqctr --verbose` sets SEQCTR_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def quiet_ray_data() -> None:
    """Turn off Ray Data's progress bars and execution banners in this process's DataContext."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    if os.environ.get("SEQCTR_PROGRESS_BARS") != "1":
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.use_datasource_v2 = os.environ.get("RAY_DATA_USE_DATASOURCE_V2", "0") == "1"
    ctx.verbose_stats_logs = False


def _is_terminal_handler(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (stderr/stdout), not to a file."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _is_seqctr_handler(handler: logging.Handler) -> bool:
    return getattr(handler, "name", None) == DRIVER_LOG


class DriverLogForwarder(logging.Handler):
    """Ray Data's handler in its logging config: forwards to the one driver-log handler of this process.

    Ray Data rebuilds the "ray.data" logger's handlers from RAY_DATA_LOGGING_CONFIG whenever a new
    dataset's context reaches the driver, so a handler named in that config is created many times; this
    one holds no file of its own (no descriptor per dataset) and writes where quiet_ray_logs points it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        target = next((h for h in logging.getLogger("ray").handlers if _is_seqctr_handler(h)), None)
        if target is not None:
            target.handle(record)


_ray_data_config_written: str | None = None  # the RAY_DATA_LOGGING_CONFIG path this process set


def _quiet_ray_data_config(log_dir: Path) -> None:
    """Point RAY_DATA_LOGGING_CONFIG at a config whose console shows only errors (unless the user set one).

    Ray Data reapplies its logging config (console at INFO) each time a dataset with a new logger id is
    planned in the driver, which undoes handler levels set once; its config file is what it rereads.
    The config is Ray Data's default otherwise: its `ray-data.log` in the session folder (DEBUG), the
    console filter that keeps records marked hidden (full stack traces) off the terminal, and seqctr's
    driver log for INFO and up. A later init (a new session folder) rewrites the file seqctr set.
    """
    global _ray_data_config_written
    current = os.environ.get("RAY_DATA_LOGGING_CONFIG")
    if current and current != _ray_data_config_written:
        return
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"seqctr": {"format": _LOG_FORMAT}},
        "filters": {"console_filter": {"()": "ray.data._internal.logging.HiddenRecordFilter"}},
        "handlers": {
            "file": {
                "class": "ray.data._internal.logging.SessionFileHandler",
                "formatter": "seqctr",
                "filename": "ray-data.log",
            },
            "console": {
                "class": "logging.StreamHandler",
                "level": "ERROR",
                "formatter": "seqctr",
                "filters": ["console_filter"],
            },
            "driver_log": {"class": f"{__name__}.DriverLogForwarder", "level": "INFO"},
        },
        "loggers": {"ray.data": {"level": "DEBUG", "handlers": ["file", "console", "driver_log"], "propagate": False}},
    }
    path = log_dir / "seqctr-ray-data-logging.json"  # JSON is YAML, which Ray Data reads
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=1))
    tmp.replace(path)
    os.environ["RAY_DATA_LOGGING_CONFIG"] = _ray_data_config_written = str(path)


def quiet_ray_logs(log_dir: str | Path) -> Path:
    """Keep only errors of Ray's driver loggers on the terminal; everything else goes to log_dir/DRIVER_LOG.

    Deprecation warnings, and any warning raised inside Ray's own code, are written to the same file.
    Idempotent: a second call (a second init_ray) adds no second handler. Returns the log file's path.
    """
    path = Path(log_dir) / DRIVER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = [h for h in logging.getLogger("ray").handlers if _is_seqctr_handler(h)]
    if existing:
        file_handler = existing[0]
    else:
        file_handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        file_handler.name = DRIVER_LOG
        file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if _is_terminal_handler(handler):
                handler.setLevel(logging.ERROR)
        # A logger that does not propagate to "ray" and has no file of its own (ray.data writes
        # ray-data.log in the session folder itself) also gets the driver log.
        own_file = any(not _is_terminal_handler(h) for h in logger.handlers)
        if (name == "ray" or (not logger.propagate and not own_file)) and file_handler not in logger.handlers:
            logger.addHandler(file_handler)
    _route_warnings(logging.getLogger("seqctr.ray_warnings"), file_handler)
    _quiet_ray_data_config(path.parent)
    return Path(getattr(file_handler, "baseFilename", path))


def _route_warnings(logger: logging.Logger, handler: logging.Handler) -> None:
    """Send Ray's warnings and all deprecation warnings to the driver log; show the rest as usual."""
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [handler]  # the newest driver log
    if getattr(warnings.showwarning, "_seqctr", False):
        return
    ray_dir = str(Path(__import__("ray").__file__).parent)
    shown = warnings.showwarning

    def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any) -> None:
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)) or str(
            filename
        ).startswith(ray_dir):
            logger.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        else:
            shown(message, category, filename, lineno, *args)

    showwarning._seqctr = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def init_ray(address: str | None = None, *, verbose_logs: bool | None = None, **kwargs: Any) -> Path | None:
    """Join RAY_ADDRESS (a cluster, or the job's cluster under `ray job submit`) or start local Ray.

    Quiet unless `verbose_logs` (default: SEQCTR_VERBOSE): worker output is not streamed to this process
    and Ray's driver logs go to the session's log folder. Returns the driver log file (None if verbose).
    """
    import ray

    loud = verbose() if verbose_logs is None else verbose_logs
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        context = ray.init(ignore_reinit_error=True)
    else:
        # Joining a cluster (or running as a Ray Job) keeps the job's own runtime env, which
        # `seqctr submit` fills with WORKER_ENV; a local instance gets it here.
        runtime_env = None if address else {"env_vars": dict(WORKER_ENV)}
        kwargs.setdefault("log_to_driver", loud)
        context = ray.init(address=address, runtime_env=runtime_env, configure_logging=False, **kwargs)
    quiet_ray_data()
    if loud:
        return None
    session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")
    log_dir = Path(session_dir) / "logs" if session_dir else Path(tempfile.gettempdir()) / "seqctr-logs"
    return quiet_ray_logs(log_dir)


class NativeStderrFilter:
    """Keeps the lines Ray's C++ core writes to this process's stderr descriptor off the terminal.

    They bypass Python's logging (e.g. `E ... core_worker.cc ... constructor arguments in the object
    store`, an advisory that reads like an error), so file descriptor 2 is swapped for a pipe whose
    reader thread appends lines in Ray's native format to the driver log and passes every other line
    through unchanged; Python's sys.stderr is pointed at the terminal itself, so seqctr's lines and
    errors stay in order with stdout. At exit, Ray is shut down first (its shutdown writes such lines
    too), then the descriptor is restored and the pipe drained, so no line is lost.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.terminal = os.dup(2)
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        # Python's own stderr (seqctr's lines, errors, tracebacks) keeps writing to the terminal directly,
        # so it stays in order with stdout; only writes to the bare descriptor go through the pipe.
        self.python_stderr = sys.stderr
        sys.stderr = open(  # noqa: SIM115 - lives until close()
            os.dup(self.terminal), "w", encoding=sys.stderr.encoding, errors="backslashreplace", buffering=1
        )
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="seqctr-stderr", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            for line in iter(source.readline, b""):
                if _NATIVE_LINE.match(line):
                    with open(self.log_path, "ab") as log:
                        log.write(line)
                else:
                    os.write(self.terminal, line)

    def close(self) -> None:
        """Shut Ray down (idempotent), restore the real stderr and forward what is still in the pipe."""
        if self.terminal < 0:
            return
        import ray

        if ray.is_initialized():
            ray.shutdown()
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = self.python_stderr
        os.dup2(self.terminal, 2)  # the pipe's last write end in this process: the reader sees EOF
        self._thread.join(timeout=5)
        os.close(self.terminal)
        self.terminal = -1


_native_filter: NativeStderrFilter | None = None


def quiet_native_stderr(log_path: Path | None) -> None:
    """For a CLI process (not tests, whose runner owns the descriptors): see NativeStderrFilter."""
    global _native_filter
    # Only in a real CLI process: when sys.stderr is not the process's own (a test runner or CliRunner
    # capturing it), swapping descriptors would send the caller's error lines past its capture.
    if log_path is not None and _native_filter is None and sys.stderr is sys.__stderr__:
        _native_filter = NativeStderrFilter(log_path)
