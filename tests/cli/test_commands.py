"""CLI behaviour a newcomer meets first: help text, generate over an existing log, score with no server,
and stopping `seqctr serve` with SIGTERM as with Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from seqctr.cli.main import app
from seqctr.cli.serve import serve_until_stopped
from seqctr.platform.config import CONFIGS_DIR, load_config

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
TYPE_TAG = re.compile(r"<[a-z][a-z_\[\], ]*>")


def all_commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += all_commands(sub, (*path, name))
    return found


def test_every_help_page_is_free_of_type_tags():
    paths = all_commands(typer.main.get_command(app))
    assert ("train",) in paths and ("models", "promote") in paths and ("data", "generate") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert not TYPE_TAG.search(result.output), (path, TYPE_TAG.findall(result.output))
        assert result.output.startswith("Usage: ")


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def generate(out: Path, *extra: str):
    args = ["data", "generate", "--config", TINY, "--out", str(out), "--events", "3000", *extra]
    return CliRunner().invoke(app, args)


def test_generate_writes_where_the_config_reads_the_log_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    realistic = str(CONFIGS_DIR / "realistic.yaml")
    sizes = ["--events", "3000", "--set", "data.synthetic.users=200", "--set", "data.synthetic.items=300"]
    result = CliRunner().invoke(app, ["data", "generate", "--config", realistic, *sizes])
    assert result.exit_code == 0, result.output
    cfg = load_config(realistic)
    assert json.loads(result.output)["events_path"] == str(Path(cfg.data.events).resolve())
    assert list((tmp_path / cfg.data.events).glob("*.parquet")) and list((tmp_path / cfg.data.items).glob("*.parquet"))
    assert not (tmp_path / "work" / "data").exists()  # not the default config's folder
    apart = ["--set", "data.events=logs/clicks", "--set", "data.items=catalogue/items"]
    refused = CliRunner().invoke(app, ["data", "generate", "--config", realistic, *sizes, *apart])
    assert refused.exit_code == 2 and "logs/clicks) and data.items (" in refused.output
    assert "catalogue/items) are not such a pair: give --out" in refused.output


def test_generate_keeps_the_same_log_and_refuses_a_different_one_without_force(tmp_path):
    out = tmp_path / "data"
    first = generate(out)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["action"] == "generated"
    cache = tmp_path / "samples" / "_SUCCESS"  # a downstream cache beside it
    cache.parent.mkdir()
    cache.write_text("fingerprint over the log's paths, sizes and mtimes")
    log = {**snapshot(out / "events"), **{f"items/{k}": v for k, v in snapshot(out / "items").items()}}
    cache_before = snapshot(cache.parent)

    again = generate(out)  # identical: kept, not rewritten (same bytes, same mtimes)
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["action"] == "kept"
    assert {**snapshot(out / "events"), **{f"items/{k}": v for k, v in snapshot(out / "items").items()}} == log

    other = generate(out, "--seed", "7")  # a different log: refused, nothing changed
    assert other.exit_code == 2
    assert f"{out}: a different behaviour log is already there" in other.output and "--force" in other.output
    assert "Traceback" not in other.output
    assert {**snapshot(out / "events"), **{f"items/{k}": v for k, v in snapshot(out / "items").items()}} == log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "samples"]  # no staging folder left

    forced = generate(out, "--seed", "7", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.output)["action"] == "replaced"
    assert snapshot(out / "events") != {k: v for k, v in log.items() if not k.startswith("items/")}
    assert json.loads((out / "synthetic.json").read_text())["config"]["seed"] == 7  # the demo's stamp follows
    assert snapshot(cache.parent) == cache_before  # generate never touches a cache


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_score_against_a_dead_port_names_the_url_and_suggests_serve():
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["score", "--url", url, "--history", "i1", "--candidates", "i2"])
    assert result.exit_code == 2
    assert f"no endpoint answers at {url}" in result.output and "seqctr serve" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped httpx error


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_sigterm_stops_the_foreground_server_as_ctrl_c_does(signum, name):
    shutdowns: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    # Python's own Ctrl-C handler, as in a terminal: a process started in the background by a shell
    # (a CI runner, nohup) inherits SIGINT ignored, and the signal would never arrive.
    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.2, os.kill, args=(os.getpid(), signum)).start()
        stopped_by = serve_until_stopped(lambda: shutdowns.append("serve.shutdown"), poll_s=30)
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert stopped_by == name
    assert shutdowns == ["serve.shutdown"]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
