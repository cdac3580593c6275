"""The one entry point: `seqctr config|data|embed|train|evaluate|tune|models|serve|score|submit|demo`.

    seqctr data generate --out work/data           # synthetic log with known truth
    seqctr data build --events work/data/events    # samples via Ray tasks
    seqctr embed --items work/data/items           # BERT item embeddings via Ray Data
    seqctr train --config configs/default.yaml --set train.epochs=3

Every command reads one `ExperimentConfig` (YAML + `--set a.b=value`), validated once here; a bad
key or value stops with a message that names the flag. Heavy imports (Ray, torch) happen inside the
commands so `seqctr --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from seqctr.cli.errors import user_errors
from seqctr.cli.jobs import add_job_commands
from seqctr.cli.models import models_app
from seqctr.cli.serve import score_command, serve_command
from seqctr.platform.config import ConfigError, ExperimentConfig, load_config, resolve_paths

# Plain help (rich_markup_mode=None), as most CLIs print it: typer's rich panels tag every option with a
# `<bool>`/`<str>` type; here a flag has no tag and a value option names what it takes (metavar=...).
# Arguments are hidden from the (tagged) Arguments list and described in their command's docstring.
PLAIN = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(help=__doc__.split("\n\n")[0], add_completion=False, **PLAIN)
config_app = typer.Typer(help="Show the resolved experiment config.", **PLAIN)
data_app = typer.Typer(help="Generate, validate and build behaviour data.", **PLAIN)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models", help="Model registry: list, show, register, promote, rollback.")
add_job_commands(app)
app.command("serve")(serve_command)
app.command("score")(score_command)


@app.callback()
def global_options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show Ray's own logs (worker output, INFO lines, warnings)."
    ),
) -> None:
    """Options for every command: `seqctr --verbose train ...`."""
    # Read by platform.runtime.init_ray; an environment variable, so a Ray Job's entrypoint inherits it.
    if verbose:
        os.environ["SEQCTR_VERBOSE"] = "1"


ConfigOpt = typer.Option(
    None, "--config", "-c", help="Experiment YAML (default: configs/default.yaml).", metavar="YAML"
)
SetOpt = typer.Option(
    None, "--set", "-s", help="Override a config key: --set train.lr=1e-3 (repeatable).", metavar="KEY=VALUE"
)


def get_config(config: Path | None, overrides: list[str] | None) -> ExperimentConfig:
    return resolve_paths(load_config(config, overrides))


def init_ray() -> None:
    """Connect to RAY_ADDRESS when set (a cluster, or inside `ray job submit`), else start local Ray.

    Quiet unless --verbose: Ray's own logs go to the session's log folder (platform/runtime.py)."""
    from seqctr.platform.runtime import init_ray as _init
    from seqctr.platform.runtime import quiet_native_stderr

    quiet_native_stderr(_init())


def _json_value(obj: Any) -> Any:
    """numpy scalars (a Tune trial's config read from a pandas row) as numbers, not quoted strings."""
    item = getattr(obj, "item", None)
    return item() if callable(item) else str(obj)


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=_json_value))


# --------------------------------------------------------------------------- config
@config_app.command("show")
@user_errors
def config_show(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Print the resolved config (file + overrides + defaults) as YAML."""
    typer.echo(load_config(config, set_).to_yaml())


# --------------------------------------------------------------------------- data
@data_app.command("generate")
@user_errors
def data_generate(
    out: Path | None = typer.Option(
        None,
        help="Output folder (events/ and items/; default: the folder of data.events and data.items).",
        metavar="PATH",
    ),
    users: int | None = typer.Option(None, help="Users (default: data.synthetic.users).", metavar="N"),
    items: int | None = typer.Option(None, help="Items (default: data.synthetic.items).", metavar="N"),
    events: int | None = typer.Option(None, help="Events (default: data.synthetic.events).", metavar="N"),
    seed: int | None = typer.Option(None, help="Seed (default: data.synthetic.seed).", metavar="N"),
    force: bool = typer.Option(False, "--force", help="Replace a different log already in --out."),
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Write a synthetic behaviour log with known click probabilities (p_true).

    The same log already in --out is kept (the caches built from it stay valid); a different one is
    replaced only with --force."""
    from seqctr.platform.data.synthetic import oracle_auc, write_synthetic
    from seqctr.platform.storage import atomic_write_text

    cfg = get_config(config, set_)
    out = out if out is not None else generate_out(cfg)
    given = {"users": users, "items": items, "events": events, "seed": seed}
    syn = cfg.data.synthetic.model_copy(update={k: v for k, v in given.items() if v is not None})
    syn = type(syn).model_validate(syn.model_dump())
    report = write_synthetic(syn, out, force=force)
    report["oracle_auc"] = oracle_auc(report["events_path"])
    # The stamp `seqctr demo` reads to reuse a log (demo._generate), kept true after every generate.
    stamp = {"config": syn.model_dump(), "report": {k: v for k, v in report.items() if k != "action"}}
    atomic_write_text(out / "synthetic.json", json.dumps(stamp, default=str))
    echo_json(report)


def generate_out(cfg: ExperimentConfig) -> Path:
    """The folder `data generate` writes by default: the one holding the config's data.events and
    data.items (the log is written as <out>/events and <out>/items), so the config's next stage reads it."""
    from seqctr.platform.storage import is_uri

    events, items = Path(cfg.data.events), Path(cfg.data.items)
    if is_uri(cfg.data.events) or (events.name, items.name, events.parent) != ("events", "items", items.parent):
        raise ConfigError(
            f"data generate writes <out>/events and <out>/items, and data.events ({cfg.data.events}) and "
            f"data.items ({cfg.data.items}) are not such a pair: give --out"
        )
    return events.parent


@data_app.command("validate")
@user_errors
def data_validate(
    path: str = typer.Argument(..., metavar="PATH", hidden=True),
    kind: str = typer.Option("auto", help="events | items | auto (by columns).", metavar="KIND"),
) -> None:
    """Check a behaviour log or item table against the data contract. PATH: a Parquet file, folder or URI."""
    from seqctr.platform.data.contract import list_parquet_files, validate_events, validate_items

    if kind == "auto":
        import pyarrow.parquet as pq

        from seqctr.platform.data.contract import DataError

        first = list_parquet_files(path)[0]
        try:
            kind = "items" if "text" in pq.read_schema(first).names else "events"
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
            raise DataError(f"{first}: not a readable Parquet file ({err})") from None
    if kind not in ("events", "items"):
        raise ConfigError(f"--kind must be events, items or auto, not {kind!r}")
    summary = validate_events(path) if kind == "events" else validate_items(path)
    typer.secho(f"ok: {path}", fg=typer.colors.GREEN)
    echo_json(summary)


@data_app.command("build")
@user_errors
def data_build(
    events: str | None = typer.Option(None, help="Behaviour log (default: data.events).", metavar="PATH"),
    out: str | None = typer.Option(None, help="Samples folder (default: data.samples).", metavar="PATH"),
    items: str | None = typer.Option(None, help="Item table for the item index (default: data.items).", metavar="PATH"),
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Build time-ordered samples (history, target, label) and train/val/test splits with Ray tasks."""
    from seqctr.platform.data.samples import build_and_write

    cfg = get_config(config, set_)
    init_ray()
    items_path = items or cfg.data.items
    report = build_and_write(
        events or cfg.data.events,
        out or cfg.data.samples,
        max_seq_len=cfg.data.max_seq_len,
        train_fraction=cfg.data.train_fraction,
        val_fraction=cfg.data.val_fraction,
        items_path=items_path if Path(items_path).exists() or "://" in items_path else None,
        features=cfg.data.features,
    )
    echo_json(report)


# --------------------------------------------------------------------------- embed
@app.command("embed")
@user_errors
def embed(
    items: str | None = typer.Option(None, help="Item table (default: data.items).", metavar="PATH"),
    out: str | None = typer.Option(None, help="Output folder (default: embed.out).", metavar="PATH"),
    model: str | None = typer.Option(
        None, help="'packaged', a BERT folder or id (default: embed.model).", metavar="MODEL"
    ),
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Embed every item text with the BERT encoder (Ray Data actor pool); cached by fingerprint."""
    from seqctr.platform.data.embeddings import embed_items

    cfg = get_config(config, set_)
    update = {k: v for k, v in {"out": out, "model": model}.items() if v}
    embed_cfg = cfg.embed.model_copy(update=update)
    init_ray()
    echo_json(embed_items(items or cfg.data.items, embed_cfg))


# --------------------------------------------------------------------------- train / evaluate
@app.command("train")
@user_errors
def train(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run train.run_name from its checkpoint."),
    init_from: str | None = typer.Option(
        None, "--init-from", help="Warm start from a checkpoint dir or registry://NAME@ALIAS.", metavar="CHECKPOINT"
    ),
) -> None:
    """Train the CTR model with Ray Train; evaluate the best checkpoint on test and write a report."""
    from seqctr.training.trainer import run_training

    cfg = get_config(config, set_)
    init_ray()
    result = run_training(cfg, resume=resume, init_from=init_from)
    echo_json({k: v for k, v in result.items() if k != "history"})


@app.command("evaluate")
@user_errors
def evaluate(
    checkpoint: str | None = typer.Option(
        None, help="Checkpoint dir or registry://NAME@ALIAS (offline evaluation).", metavar="CHECKPOINT"
    ),
    events: str | None = typer.Option(
        None,
        help="A behaviour log to score (default: the test split); with --impressions, the clicks to join.",
        metavar="PATH",
    ),
    impressions: str | None = typer.Option(
        None, help="An impression log (serve.impressions): per-variant metrics on live traffic.", metavar="PATH"
    ),
    window: str = typer.Option(
        "1h", help="With --impressions: how long after a request its click counts (90s, 30m, 1h, 2d).", metavar="TIME"
    ),
    as_json: bool = typer.Option(False, "--json", help="With --impressions: print JSON instead of the table."),
) -> None:
    """Score any log with any checkpoint and print AUC, GAUC, logloss, calibration (+ oracle AUC).

    With --impressions LOG --events CLICKS: join the served and shadow scores of the impression log with
    the clicks that came later (the first event of the same user and item within --window of the
    request; none = a non-click) and print AUC / GAUC / logloss per variant, served and shadow apart."""
    if impressions is None:
        if checkpoint is None:
            raise ConfigError("evaluate: give --checkpoint (offline) or --impressions with --events (live traffic)")
        from seqctr.training.evaluation import evaluate_log

        init_ray()
        echo_json(evaluate_log(checkpoint, events))
        return
    if checkpoint is not None:
        raise ConfigError("--impressions scores the logged variants; it takes no --checkpoint")
    if events is None:
        raise ConfigError("--impressions needs --events: the events log holding the clicks (user_id, item_id, ...)")
    from seqctr.serving.evidence import evaluate_impressions, format_table, parse_window

    try:
        parse_window(window)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    report = evaluate_impressions(impressions, events, window)
    typer.echo(json.dumps(report, indent=2) if as_json else format_table(report))


# --------------------------------------------------------------------------- tune
@app.command("tune")
@user_errors
def tune_cmd(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    samples: int | None = typer.Option(None, "--samples", help="Trials (default: tune.num_samples).", metavar="N"),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent", help="Trials at once.", metavar="N"),
    resume: str | None = typer.Option(None, "--resume", help="Resume the campaign of this name.", metavar="NAME"),
    no_register: bool = typer.Option(False, "--no-register", help="Do not register the winner."),
) -> None:
    """Run a Ray Tune campaign (ASHA + Optuna) of Ray Train trials; register and maybe promote the best."""
    from seqctr.tuning.campaign import CampaignInterrupted, run_campaign

    cfg = get_config(config, set_)
    init_ray()
    try:
        echo_json(run_campaign(cfg, samples, max_concurrent, resume, register=not no_register))
    except CampaignInterrupted as err:
        typer.secho(f"interrupted: {err}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


# --------------------------------------------------------------------------- demo
@app.command("demo")
@user_errors
def demo(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    serve_seconds: float = typer.Option(
        0, help="Keep the endpoint up this long after the demo (0 = stop).", metavar="SECONDS"
    ),
) -> None:
    """The main job end to end: generate, build, embed, train, tune, promote, serve, score."""
    from seqctr.demo import run_demo

    cfg = get_config(config, set_)
    init_ray()
    run_demo(cfg, serve_seconds=serve_seconds)


def main() -> None:  # pragma: no cover
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
