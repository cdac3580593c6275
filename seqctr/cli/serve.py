"""`seqctr serve` (start the endpoint, or hot-reload a running one) and `seqctr score` (call it).

    seqctr serve --model registry://seqctr@production              # start; blocks until Ctrl-C
    seqctr serve --model work/runs/seqctr/latest --detach           # on a running cluster (RAY_ADDRESS)
    seqctr serve --model registry://seqctr@v4                       # app already running: hot reload
    seqctr score --url http://127.0.0.1:8000 --history i1,i2,i3 --candidates i4,i5 --rank 1

The app is deployed the way `serve deploy` does it (a declarative Serve config: import path + args),
with the model only in CTRScorer's `user_config`. So a second `seqctr serve --model ...` changes just
that user_config and Serve reconfigures the live replicas in place: no restart, no failed request.
`--config` takes an experiment YAML or a Serve config file such as configs/serve.yaml. The config is
read and validated here, once (YAML + --set, local paths made absolute), and the builder's args carry it
whole, so neither the Serve controller nor a replica reads a file or searches for a path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml

from seqctr.platform.config import ConfigError, ExperimentConfig

IMPORT_PATH = "seqctr.serving.app:build_app"
SCORER = "CTRScorer"
DEFAULT_APP = "seqctr"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


# ----------------------------------------------------------------------------- deploying


def read_serve_file(path: str | Path) -> dict[str, Any] | None:
    """A Serve config file (has `applications:`) as a dict; None for an experiment config."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return raw if isinstance(raw, dict) and "applications" in raw else None


def app_entry(
    name: str,
    args: dict[str, Any],
    user_config: dict[str, Any],
    route_prefix: str = "/",
    env_vars: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One application of a Serve deploy config: the builder, its args, the scorer's user_config, and
    environment variables for the builder and every replica (the API key, when one is configured)."""
    entry: dict[str, Any] = {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": IMPORT_PATH,
        "args": args,
        "deployments": [{"name": SCORER, "user_config": user_config}],
    }
    if env_vars:
        entry["runtime_env"] = {"env_vars": env_vars}
    return entry


def api_key_env_vars(api_key_env: str) -> dict[str, str]:
    """{name: value} of the API key variable when it is set here, to hand to the app's runtime_env.
    (It is then visible in the Serve config; on a cluster, set it in the cluster's environment instead.)"""
    value = os.environ.get(api_key_env) if api_key_env else None
    return {api_key_env: value} if value else {}


def running_cluster() -> str | None:
    """The cluster named by RAY_ADDRESS (what `ray start --head` tells you to export); None if unset.
    (Never Ray's "auto" search, which would join any Ray found here, e.g. another user's test run.)"""
    return os.environ.get("RAY_ADDRESS") or None


def connect_ray(detach: bool) -> str:
    """Join RAY_ADDRESS's cluster, else start a local Ray (not with --detach, whose app would stop when
    this command exits). Returns the dashboard's HTTP address, where Serve's REST API lives."""
    import ray

    address = running_cluster()
    if not ray.is_initialized() and address is None and detach:
        raise ConfigError(
            "--detach needs a running Ray cluster named by RAY_ADDRESS (`ray start --head` prints it): "
            "an app on a Ray started by this command would stop when it exits"
        )
    ray.init(address=address, log_to_driver=True, configure_logging=False, ignore_reinit_error=True)
    return dashboard_address()


def dashboard_address() -> str:
    """The connected cluster's dashboard (RAY_DASHBOARD_ADDRESS overrides), as an http:// address."""
    import ray

    context = ray.init(ignore_reinit_error=True)  # already connected: returns that connection's context
    dashboard = os.environ.get("RAY_DASHBOARD_ADDRESS") or context.dashboard_url
    if not dashboard:
        raise ConfigError("this Ray cluster runs no dashboard, which Serve's REST API needs (ray[default])")
    return dashboard if "://" in dashboard else f"http://{dashboard}"


def serve_client(dashboard: str) -> Any:
    """Serve's REST API client: the one `serve deploy` and `serve status` use."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(dashboard)


def live_applications(client: Any) -> dict[str, dict[str, Any]]:
    """name -> details of every application Serve currently knows."""
    return client.get_serve_details().get("applications", {}) or {}


def scorer_info(app_name: str, timeout_s: float = 30.0) -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle(SCORER, app_name=app_name).info.remote().result(timeout_s=timeout_s)


def wait_running(client: Any, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    status, message = "UNKNOWN", ""
    while time.monotonic() < deadline:
        app = live_applications(client).get(name) or {}
        status, message = app.get("status", "NOT_STARTED"), app.get("message", "")
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            break
        time.sleep(0.5)
    raise RuntimeError(f"Serve app {name!r} is {status} after {timeout_s:.0f}s: {message}")


def deploy(
    args: dict[str, Any],
    user_config: dict[str, Any],
    *,
    name: str = DEFAULT_APP,
    host: str = "127.0.0.1",
    port: int = 8000,
    route_prefix: str = "/",
    env_vars: dict[str, str] | None = None,
    timeout_s: float = 300.0,
    dashboard: str | None = None,
) -> dict[str, Any]:
    """Start the app, or hot-reload it when one named `name` runs with the same args.

    Other declaratively deployed apps are kept. Returns {"action": started|reloaded|redeployed, "model":
    the scorer's info after the change}.
    """
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    client = serve_client(dashboard or dashboard_address())
    apps = live_applications(client)
    current = apps.get(name)
    action = "started"
    before: dict[str, Any] | None = None
    if current is not None and current.get("status") in ("RUNNING", "DEPLOYING"):
        before = scorer_info(name)
        user_config = {**user_config, "fallback": before["resolved"]}  # where a new replica falls back
        running_args = (current.get("deployed_app_config") or {}).get("args")
        action = "reloaded" if running_args == args else "redeployed"
    entries = [
        details["deployed_app_config"]
        for other, details in apps.items()
        if other != name and details.get("deployed_app_config")
    ]
    entries.append(app_entry(name, args, user_config, route_prefix, env_vars))
    client.deploy_applications({"http_options": {"host": host, "port": port}, "applications": entries})
    wait_running(client, name, timeout_s)  # RUNNING again = every replica has reconfigured or restarted
    if action == "reloaded":
        return {"action": action, "model": wait_reload(name, before, timeout_s)}
    return {"action": action, "model": scorer_info(name)}


def wait_reload(name: str, before: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    """The scorer's info once it records a reload attempt newer than `before`'s."""
    previous = (before or {}).get("last_reload")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = scorer_info(name)
        if info.get("last_reload") and info["last_reload"] != previous:
            return info
        time.sleep(0.5)
    raise RuntimeError(f"no reload of app {name!r} was recorded within {timeout_s:.0f}s")


def serve_args(config: Path | None, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any], ExperimentConfig]:
    """(builder args, http options, the experiment config) from --config (a Serve config file or an
    experiment YAML) + --set. The args carry the config whole (`experiment`); a Serve file's own args
    (`config`, `overrides`, CPUs) are resolved here, with a relative path read from the working directory."""
    from seqctr.serving.app import AppArgs, app_config

    http: dict[str, Any] = {}
    args: dict[str, Any] = {}
    if config is not None:
        if not config.exists():
            raise ConfigError(f"--config: file not found: {config}")
        serve_file = read_serve_file(config)
        if serve_file is None:
            args["config"] = str(config)
        else:
            http = serve_file.get("http_options") or {}
            apps = serve_file["applications"]
            entry = next((a for a in apps if a.get("import_path") == IMPORT_PATH), None)
            if entry is None:
                raise ConfigError(f"--config {config}: no application with import_path {IMPORT_PATH}")
            args = dict(entry.get("args") or {})
    args["overrides"] = [*args.get("overrides", []), *overrides]
    args.pop("model", None)  # the model lives in the scorer's user_config (see module doc)
    cfg = app_config(AppArgs.model_validate(args))
    resolved = {k: v for k, v in args.items() if k not in ("config", "overrides")}
    return {**resolved, "experiment": cfg.to_dict()}, http, cfg


# ----------------------------------------------------------------------------- --variant

CHAMPION = "champion"
VARIANT_FLAG = "NAME=REF[:PCT][:shadow]"
_PCT = re.compile(r"(\d+(?:\.\d+)?)%")


def parse_variant_flag(text: str) -> tuple[str, dict[str, Any]]:
    """One `--variant NAME=REF[:PCT][:shadow]` as (NAME, {model, weight %, shadow}); REF may hold colons
    (registry://, s3://): only trailing `:NN%` and `:shadow` parts are options. A shadow's PCT is the share
    of requests it scores (default 100%); a served variant's PCT is its share of the traffic (required)."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise ConfigError(
            f"--variant {text!r}: expected {VARIANT_FLAG}, e.g. challenger=registry://seqctr@challenger:10%"
        )
    parts = rest.strip().split(":")
    pct: float | None = None
    shadow = False
    while len(parts) > 1:
        last = parts[-1].strip()
        if last.lower() == "shadow" and not shadow:
            shadow = True
        elif _PCT.fullmatch(last) and pct is None:
            pct = float(last[:-1])
        elif re.fullmatch(r"\d+(?:\.\d+)?", last):
            raise ConfigError(f"--variant {text!r}: a share needs a % sign ({last}%)")
        else:
            break
        parts.pop()
    ref = ":".join(parts).strip()
    if not ref:
        raise ConfigError(f"--variant {text!r}: no model REF before the options ({VARIANT_FLAG})")
    if pct is not None and pct > 100:
        raise ConfigError(f"--variant {text!r}: a share is 0..100%, not {pct:g}%")
    if pct is None and not shadow:
        raise ConfigError(f"--variant {text!r}: a served variant needs its share of the traffic, e.g. {name}={ref}:10%")
    return name, {"model": ref, "pct": 100.0 if pct is None else pct, "shadow": shadow}


def variants_from_flags(flags: list[str], champion_model: str) -> dict[str, dict[str, Any]]:
    """`serve.variants` from --variant flags: the champion (the main model, --model or serve.model) gets
    the traffic the served flags leave (100% - their shares); weights are fractions (0.9 / 0.1)."""
    out: dict[str, dict[str, Any]] = {}
    for text in flags:
        name, spec = parse_variant_flag(text)
        if name == CHAMPION:
            raise ConfigError(f"--variant {text!r}: {CHAMPION!r} is the main model (--model); name the others")
        if name in out:
            raise ConfigError(f"--variant {text!r}: variant {name!r} given twice")
        out[name] = spec
    served = sum(spec["pct"] for spec in out.values() if not spec["shadow"])
    if served > 100:
        shares = ", ".join(f"{n}={s['pct']:g}%" for n, s in out.items() if not s["shadow"])
        raise ConfigError(f"--variant: the served shares add up to {served:g}% ({shares}), more than 100%")
    variants = {CHAMPION: {"model": champion_model, "weight": round((100.0 - served) / 100.0, 6), "shadow": False}}
    for name, spec in out.items():
        variants[name] = {"model": spec["model"], "weight": round(spec["pct"] / 100.0, 6), "shadow": spec["shadow"]}
    return variants


def with_variant_flags(cfg: ExperimentConfig, flags: list[str]) -> ExperimentConfig:
    """cfg with serve.variants built from --variant flags, validated by the config's own rules."""
    if not flags:
        return cfg
    if cfg.serve.variants:
        raise ConfigError(
            "--variant: the config already sets serve.variants "
            f"({', '.join(cfg.serve.variants)}); give the variants in one place"
        )
    variants = variants_from_flags(flags, cfg.serve.model)
    try:
        return cfg.with_overrides({"serve.variants": variants})
    except ConfigError as err:
        raise ConfigError(f"--variant: {err}") from None


# ----------------------------------------------------------------------------- commands


def serve_command(
    model: str | None = typer.Option(
        None, "--model", "-m", help="registry://NAME@ALIAS or a checkpoint dir.", metavar="MODEL"
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Experiment YAML or a Serve config file.", metavar="YAML"
    ),
    set_: list[str] = typer.Option(
        None, "--set", "-s", help="Config override, e.g. serve.max_batch_size=8.", metavar="KEY=VALUE"
    ),
    name: str = typer.Option(DEFAULT_APP, help="Serve application name.", metavar="NAME"),
    host: str | None = typer.Option(None, help="HTTP host (default serve.host).", metavar="HOST"),
    port: int | None = typer.Option(None, help="HTTP port (default serve.port).", metavar="PORT"),
    detach: bool = typer.Option(False, "--detach", help="Return once running (needs a running Ray cluster)."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for the app or the reload.", metavar="SECONDS"),
    variant: list[str] = typer.Option(
        None,
        "--variant",
        help="Champion/challenger: a model beside --model, e.g. challenger=registry://seqctr@challenger:10% "
        "or shadow=registry://seqctr@v0007:50%:shadow (repeatable); --model, named champion, gets the rest.",
        metavar=VARIANT_FLAG,
    ),
) -> None:
    """Start the CTR endpoint on Ray Serve, or hot-reload the model of the one already running.

    With --variant, users are split between --model (variant `champion`) and the named variants by a stable
    hash of user_id (serve.variants); running it again with other shares re-weights the live app in place."""
    from seqctr.serving.app import model_user_config, read_api_key

    try:
        args, http, cfg = serve_args(config, set_ or [])  # validated here: a bad flag stops before Ray starts
        if model:
            cfg = cfg.with_overrides({"serve.model": model})
        cfg = with_variant_flags(cfg, variant or [])
        read_api_key(cfg.serve.api_key_env)
        user_config = model_user_config(cfg)
        dashboard = connect_ray(detach)
        result = deploy(
            args,
            user_config,
            name=name,
            host=host or http.get("host") or cfg.serve.host,
            port=port or http.get("port") or cfg.serve.port,
            env_vars=api_key_env_vars(cfg.serve.api_key_env),
            timeout_s=timeout,
            dashboard=dashboard,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise _fail(str(err)) from None
    info = result["model"]
    reload = info.get("last_reload") or {}
    if result["action"] == "reloaded" and not reload.get("ok", True):
        typer.echo(json.dumps(info, indent=2, default=str))
        raise _fail(f"reload failed, still serving {info['name']} {info['version']}: {reload.get('error')}")
    url = f"http://{host or http.get('host') or cfg.serve.host}:{port or http.get('port') or cfg.serve.port}"
    typer.echo(f"{result['action']}: {info['name']} {info['version']} at {url} (docs: {url}/docs)")
    if result["action"] != "started" or detach:
        return
    typer.echo("serving until Ctrl-C or SIGTERM")
    from ray import serve

    stopped_by = serve_until_stopped(serve.shutdown)
    typer.echo(f"stopped ({stopped_by}): Serve shut down, {url} is closed")


class _Terminated(Exception):
    """Raised in the main thread by the SIGTERM handler of serve_until_stopped."""


def serve_until_stopped(shutdown: Callable[[], None], poll_s: float = 5.0) -> str:
    """Block until Ctrl-C or SIGTERM, then call `shutdown` once; returns which one stopped it.

    SIGTERM (what `kill`, systemd and Kubernetes send) takes the same path as Ctrl-C, so the app and
    the local Ray instance are shut down instead of the process dying mid-request. The previous
    SIGTERM handler is restored afterwards.
    """

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while True:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        stopped_by = "Ctrl-C"
    except _Terminated:
        stopped_by = "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous)
    shutdown()
    return stopped_by


def score_command(
    url: str = typer.Option("http://127.0.0.1:8000", help="Endpoint base URL.", metavar="URL"),
    history: str = typer.Option("", help="Clicked item ids, oldest first, comma-separated.", metavar="IDS"),
    history_timestamps: str = typer.Option(
        "", help="Unix seconds of each history click, comma-separated (same count as --history).", metavar="SECONDS"
    ),
    candidates: str = typer.Option(..., help="Candidate item ids, comma-separated.", metavar="IDS"),
    rank: int | None = typer.Option(None, "--rank", "-k", help="Return only the top K (POST /v1/rank).", metavar="K"),
    explain: bool = typer.Option(False, help="Include attention weights per history item."),
    user_id: str | None = typer.Option(None, help="User id (logged only).", metavar="ID"),
    api_key_env: str = typer.Option(
        "SEQCTR_API_KEY", help="Env var holding the X-API-Key value, if any.", metavar="VAR"
    ),
    timeout: float = typer.Option(10.0, help="Seconds per HTTP request.", metavar="SECONDS"),
) -> None:
    """Score (or rank) candidates for one history against a running endpoint; prints the JSON answer."""
    import httpx
    from pydantic import ValidationError

    from seqctr.serving.client import CTRClient, CTRClientError

    hist = [h.strip() for h in history.split(",") if h.strip()]
    cands = [c.strip() for c in candidates.split(",") if c.strip()]
    stamps: list[int] | None = None
    if history_timestamps.strip():
        try:
            stamps = [int(t) for t in history_timestamps.split(",") if t.strip()]
        except ValueError:
            message = f"--history-timestamps: whole unix seconds, comma-separated; got {history_timestamps!r}"
            raise _fail(message) from None
    fields = {"history_timestamps": stamps, "user_id": user_id, "explain": explain}
    try:
        with CTRClient(url, api_key=os.environ.get(api_key_env) or None, timeout=timeout) as client:
            if rank is not None:
                out = client.rank(hist, cands, k=rank, **fields)
            else:
                out = client.score(hist, cands, **fields)
    except ValidationError as err:
        first = err.errors()[0]
        raise _fail(f"--candidates/--history/--history-timestamps: {first['loc']}: {first['msg']}") from None
    except ValueError as err:  # e.g. a timestamp count that differs from --history's
        raise _fail(f"--history-timestamps: {err}") from None
    except httpx.ConnectError as err:  # nothing listens there (refused, unknown host)
        message = f"no endpoint answers at {url} ({err}); start one with `seqctr serve --model MODEL` or pass --url"
        raise _fail(message) from None
    except httpx.TimeoutException:
        message = f"{url} did not answer within {timeout:g}s (--timeout); is `seqctr serve` still starting?"
        raise _fail(message) from None
    except (CTRClientError, httpx.HTTPError) as err:
        raise _fail(str(err)) from None
    typer.echo(out.model_dump_json(indent=2, exclude_none=True))
