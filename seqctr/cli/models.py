"""`seqctr models ...`: list, show, register, promote and roll back registry versions.

    seqctr models list                       # models, version counts, aliases
    seqctr models list seqctr                # versions of one model with metrics and aliases
    seqctr models show seqctr@production     # one version's lineage as JSON
    seqctr models promote seqctr v3          # moves production only if v3 beats it on val_auc
    seqctr models rollback seqctr            # production back to its previous target

The registry root is `--root`, else `registry.root` of `--config` / `--set` when given, else
$SEQCTR_REGISTRY (what `registry://` refs resolve against everywhere), else the default. Only the
registry is imported here (no torch, no Ray), so these commands answer quickly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from seqctr.cli.errors import user_errors
from seqctr.platform.config import load_config, resolve_paths
from seqctr.platform.registry import Registry, VersionRecord, default_registry_root

models_app = typer.Typer(
    help="Model registry: list, show, register, promote and roll back versions.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help, as in seqctr.cli.main
)

RootOpt = typer.Option(
    None,
    "--root",
    help="Registry folder or URI (default: --config/--set registry.root, else $SEQCTR_REGISTRY).",
    metavar="PATH",
)
ConfigOpt = typer.Option(
    None, "--config", "-c", help="Experiment YAML (default: configs/default.yaml).", metavar="YAML"
)
SetOpt = typer.Option(
    None, "--set", "-s", help="Override a config key: --set registry.root=/x (repeatable).", metavar="KEY=VALUE"
)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
AliasOpt = typer.Option("production", "--alias", "-a", help="Alias to move.", metavar="ALIAS")


def _registry(root: str | None, config: Path | None, overrides: list[str] | None) -> Registry:
    if root:
        return Registry(root)
    if config is None and not overrides:
        return Registry(default_registry_root(None))
    return Registry(resolve_paths(load_config(config, overrides)).registry.root)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def _aliases_of(aliases: dict[str, str], version: str) -> str:
    return ",".join(sorted(a for a, v in aliases.items() if v == version)) or "-"


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@models_app.command("list")
@user_errors
def list_cmd(
    name: str | None = typer.Argument(None, metavar="NAME", hidden=True),
    metric: str = typer.Option("val_auc", help="Metric column shown for each version.", metavar="METRIC"),
    as_json: bool = JsonOpt,
    root: str | None = RootOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """List models, or the versions of one model with their metric and aliases.

    NAME: a model, whose versions are listed (default: list the models)."""
    registry = _registry(root, config, set_)
    if name is None:
        models = [
            {"name": m, "versions": len(registry.list_versions(m)), "aliases": registry.aliases(m)}
            for m in registry.list_models()
        ]
        if as_json:
            _echo_json(models)
        elif not models:
            typer.echo(f"no models in {registry.root}")
        else:
            rows = [(m["name"], m["versions"], ", ".join(f"{a}={v}" for a, v in m["aliases"].items())) for m in models]
            typer.echo(_table(["model", "versions", "aliases"], rows))
        return
    versions = registry.list_versions(name)
    aliases = registry.aliases(name)
    if as_json:
        _echo_json([{**r.to_dict(), "aliases": _aliases_of(aliases, r.version).split(",")} for r in versions])
        return
    rows = [
        (r.version, r.created, r.run_id, _fmt(r.metrics.get(metric)), _aliases_of(aliases, r.version), r.parent)
        for r in versions
    ]
    typer.echo(_table(["version", "created", "run", metric, "aliases", "parent"], rows))


@models_app.command("show")
@user_errors
def show_cmd(
    ref: str = typer.Argument(..., metavar="REF", hidden=True),
    root: str | None = RootOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Print one version's record (lineage, metrics, checkpoint path) and the aliases pointing at it.

    REF: NAME, NAME@VERSION (seqctr@v3) or NAME@ALIAS (seqctr@production)."""
    registry = _registry(root, config, set_)
    record = registry.get(ref)
    aliases = registry.aliases(record.name)
    _echo_json(
        {**record.to_dict(), "uri": record.uri, "aliases": sorted(a for a, v in aliases.items() if v == record.version)}
    )


@models_app.command("register")
@user_errors
def register_cmd(
    checkpoint_dir: Path = typer.Argument(..., metavar="CHECKPOINT_DIR", hidden=True),
    name: str | None = typer.Option(None, "--name", "-n", help="Model name (default: registry.name).", metavar="NAME"),
    run_id: str = typer.Option("manual", "--run-id", help="Run or campaign id recorded as lineage.", metavar="ID"),
    parent: str | None = typer.Option(None, "--parent", help="Parent version, e.g. seqctr@v2.", metavar="REF"),
    data_fingerprint: str | None = typer.Option(
        None, "--data-fingerprint", help="Training data fingerprint.", metavar="SHA256"
    ),
    root: str | None = RootOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Copy a checkpoint into the registry as the next version of NAME (aliases are not moved).

    CHECKPOINT_DIR: a checkpoint folder, verified before and after copying."""
    if root and name:
        registry = Registry(root)
    else:
        cfg = resolve_paths(load_config(config, set_))
        registry, name = Registry(root or cfg.registry.root), name or cfg.registry.name
    record: VersionRecord = registry.register(
        name, checkpoint_dir, run_id=run_id, parent=parent, data_fingerprint=data_fingerprint
    )
    typer.secho(f"registered {record.ref} from {record.source}", fg=typer.colors.GREEN)
    _echo_json(record.to_dict())


@models_app.command("promote")
@user_errors
def promote_cmd(
    name: str = typer.Argument(..., metavar="NAME", hidden=True),
    version: str = typer.Argument(..., metavar="VERSION", hidden=True),
    alias: str = AliasOpt,
    metric: str | None = typer.Option(
        None, help="Metric to beat (default: registry.promote_metric).", metavar="METRIC"
    ),
    force: bool = typer.Option(False, "--force", help="Move the alias even if the candidate is not better."),
    root: str | None = RootOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Move ALIAS to VERSION only if its metric strictly beats the current target's (or --force).

    NAME: the model; VERSION: the candidate (v3 or 3)."""
    if metric is None:
        metric = load_config(config, set_).registry.promote_metric
    registry = _registry(root, config, set_)
    result = registry.promote(name, version, alias=alias, metric=metric, force=force)
    if result.moved:
        typer.secho(f"promoted {name}@{result.candidate} to {alias}: {result.reason}", fg=typer.colors.GREEN)
    else:
        typer.secho(f"not promoted: {result.reason}; {alias} stays {result.previous}", fg=typer.colors.YELLOW)
    _echo_json(result.to_dict())


@models_app.command("rollback")
@user_errors
def rollback_cmd(
    name: str = typer.Argument(..., metavar="NAME", hidden=True),
    alias: str = AliasOpt,
    root: str | None = RootOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Point ALIAS back at its previous target (repeatable). NAME: the model."""
    record = _registry(root, config, set_).rollback(name, alias=alias)
    typer.secho(f"{alias} of {name} rolled back to {record.version}", fg=typer.colors.GREEN)
    _echo_json(record.to_dict())
