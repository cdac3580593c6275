"""Bad input, table by table, across the CLI, the data contract and the HTTP API.

Every refused input stops with a clear error that names what is wrong (the file and column, the config
key, the checkpoint file, the request field) and leaves nothing half-written behind; the inputs a
demanding user expects to work (emoji texts, texts far beyond the encoder's length, duplicate
impressions, a history of 100k items) work. The CLI is driven through `seqctr.cli.main.app` as a user types
it: a refusal is exit code 2 with one `error: ...` line, never a traceback.

Decisions on the inputs the contract leaves open:
- texts with invalid UTF-8 bytes are refused (the row is named), since any repair would embed garbage;
- duplicate events are kept: an impression log legitimately repeats (user, item) pairs, and a
  same-second twin never enters its twin's history (history is strictly earlier);
- "future" timestamps: a unix-seconds value after year 9999 is a unit mistake (milliseconds) and is
  refused; a merely future date (2100) is accepted, so validation never depends on the wall clock;
- a non-JSON Content-Type is 415, a body that is not JSON 422, a body over serve.max_body_bytes 413.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parent / "serving"))  # share the serving tests' helpers

from serving_helpers import free_port, tiny_serving_config, write_checkpoint  # noqa: E402

from seqctr.cli.main import app  # noqa: E402
from seqctr.platform.config import CONFIGS_DIR  # noqa: E402
from seqctr.platform.registry import Registry  # noqa: E402

TINY = str(CONFIGS_DIR / "tiny.yaml")
MAX_SEQ_LEN = 10  # data.max_seq_len of configs/tiny.yaml
MAX_CANDIDATES = 1000
MAX_BODY_BYTES = 1_000_000
APP_NAME = "seqctr_bad_inputs"

# ------------------------------------------------------------------------------------------ helpers


def events_table(**overrides: pa.Array | None) -> pa.Table:
    """A valid 6-event log; `column=array` replaces a column, `column=None` drops it."""
    columns: dict[str, pa.Array | None] = {
        "user_id": pa.array(["u1", "u1", "u1", "u2", "u2", "u2"]),
        "item_id": pa.array(["i1", "i2", "i3", "i1", "i3", "i2"]),
        "timestamp": pa.array([100, 200, 300, 150, 250, 350], type=pa.int64()),
        "label": pa.array([1, 0, 1, 1, 0, 1], type=pa.int8()),
    }
    columns.update(overrides)
    return pa.table({name: col for name, col in columns.items() if col is not None})


def items_table(ids: list[str] | None = None, texts: list[str | None] | pa.Array | None = None) -> pa.Table:
    ids = ids or ["i1", "i2", "i3"]
    return pa.table({"item_id": ids, "text": texts if texts is not None else [f"title {i}" for i in ids]})


def write(path: Path, table: pa.Table) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path.resolve())


def invalid_utf8_texts() -> pa.Array:
    """A string column whose second value is the Latin-1 bytes of "café": Arrow stores it unchecked."""
    data = b"red shoe" + "café".encode("latin-1")
    offsets = pa.array([0, 8, len(data)], type=pa.int32()).buffers()[1]
    return pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(data)])


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_refused(result: Result, *patterns: str) -> str:
    """Exit code 2 and, as the last line, one `error: ...` matching every pattern; no traceback.
    Returns that line. (Lines before it are the job's own progress lines.)"""
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output, output
    error = output.rstrip("\n").split("\n")[-1]
    assert error.startswith("error: "), output
    for pattern in patterns:
        assert re.search(pattern, error), f"{pattern!r} not in {error!r}"
    return error


def assert_nothing_written(out: Path) -> None:
    """A refused job leaves neither `out` nor its temporary siblings (.out.tmp-*) behind."""
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ------------------------------------------------------------------------------- data: event logs


@dataclass(frozen=True)
class DataCase:
    id: str
    make: Callable[[Path], str]  # writes the bad input under a folder, returns its path
    expect: tuple[str, ...]  # regexes; "{path}" stands for the escaped path the message must name


def _not_parquet(root: Path) -> str:
    path = root / "events.parquet"
    path.write_text("user_id,item_id,timestamp,label\nu1,i1,100,1\n")
    return str(path.resolve())


def _truncated(root: Path) -> str:
    path = Path(write(root / "events.parquet", events_table()))
    path.write_bytes(path.read_bytes()[:-40])
    return str(path)


def _empty_folder(root: Path) -> str:
    (root / "log").mkdir()
    (root / "log" / "_SUCCESS").write_text("")  # hidden files are not data
    return str((root / "log").resolve())


def _events_with(**columns: pa.Array | None) -> Callable[[Path], str]:
    return lambda root: write(root / "events.parquet", events_table(**columns))


EVENT_CASES = [
    DataCase("not-parquet", _not_parquet, ("{path}", "not a (readable )?Parquet file")),
    DataCase("truncated-parquet", _truncated, ("{path}", "not a (readable )?Parquet file", "corrupt")),
    DataCase("missing-column", _events_with(label=None), ("{path}", "missing column 'label'")),
    DataCase(
        "wrong-type-timestamp",
        _events_with(timestamp=pa.array(["100", "200", "300", "150", "250", "350"])),
        ("{path}", "column 'timestamp' has type string, expected int64 unix seconds"),
    ),
    DataCase(
        "wrong-type-user-id",
        _events_with(user_id=pa.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])),
        ("{path}", "column 'user_id' has type double, expected string or integer"),
    ),
    DataCase(
        "null-user-id",
        _events_with(user_id=pa.array(["u1", "u1", None, "u2", "u2", "u2"])),
        ("{path}", "column 'user_id': null id at row 2"),
    ),
    DataCase(
        "null-item-id",
        _events_with(item_id=pa.array(["i1", None, "i3", "i1", "i3", "i2"])),
        ("{path}", "column 'item_id': null id at row 1"),
    ),
    DataCase(
        "label-2",
        _events_with(label=pa.array([1, 0, 2, 1, 0, 1], type=pa.int8())),
        ("{path}", "column 'label': label 2 at row 2, labels must be 0 or 1"),
    ),
    DataCase(
        "label-minus-1",
        _events_with(label=pa.array([1, -1, 0, 1, 0, 1], type=pa.int64())),
        ("{path}", "column 'label': label -1 at row 1"),
    ),
    DataCase(
        "label-nan",
        _events_with(label=pa.array([1.0, 0.0, 1.0, float("nan"), 0.0, 1.0])),
        ("{path}", "column 'label': NaN label at row 3"),
    ),
    DataCase(
        "empty-log",
        lambda root: write(root / "events.parquet", events_table().slice(0, 0)),
        ("{path}", "empty dataset: 0 rows", "column 'user_id'"),
    ),
    DataCase("empty-folder", _empty_folder, ("{path}", "empty dataset: the folder holds no \\*.parquet files")),
    DataCase(
        "negative-timestamp",
        _events_with(timestamp=pa.array([100, 200, -5, 150, 250, 350], type=pa.int64())),
        ("{path}", "column 'timestamp': negative timestamp -5 at row 2"),
    ),
    DataCase(
        "future-timestamp-in-milliseconds",
        _events_with(timestamp=pa.array([1_700_000_000_000 + k for k in range(6)], type=pa.int64())),
        ("{path}", "column 'timestamp': timestamp 1700000000000 at row 0 is after year 9999", "milliseconds"),
    ),
]


def _patterns(case: DataCase, path: str) -> list[str]:
    return [p.replace("{path}", re.escape(path)) for p in case.expect]


@pytest.mark.parametrize("case", EVENT_CASES, ids=lambda c: c.id)
def test_bad_event_log_is_refused_by_validate_and_build(case: DataCase, tmp_path: Path, ray_session) -> None:
    path = case.make(tmp_path)
    assert_refused(run_cli("data", "validate", path), *_patterns(case, path))

    out = tmp_path / "samples"
    build = run_cli("data", "build", "--events", path, "--out", str(out), "--config", TINY)
    assert_refused(build, *_patterns(case, path))
    assert_nothing_written(out)


# ------------------------------------------------------------------------------ data: item tables

ITEM_CASES = [
    DataCase(
        "text-null",
        lambda root: write(root / "items.parquet", items_table(texts=["red shoe", None, "blue hat"])),
        ("{path}", "column 'text': null text at row 1"),
    ),
    DataCase(
        "text-blank",
        lambda root: write(root / "items.parquet", items_table(texts=["red shoe", "blue hat", " \t "])),
        ("{path}", "column 'text': empty text at row 2"),
    ),
    DataCase(
        "text-column-missing",
        lambda root: write(root / "items.parquet", pa.table({"item_id": ["i1"], "title": ["red shoe"]})),
        ("{path}", "missing column 'text'"),
    ),
    DataCase(
        "text-not-utf8",
        lambda root: write(root / "items.parquet", items_table(["i1", "i2"], invalid_utf8_texts())),
        ("{path}", "column 'text': invalid UTF-8 at row 1"),
    ),
    DataCase(  # every stage reads an item's columns by id: the build too, with or without model.text
        "item-id-repeated",
        lambda root: write(root / "items.parquet", items_table(["i1", "i2", "i1"], ["red shoe", "hat", "red boot"])),
        ("{path}", r"column 'item_id': duplicate id 'i1' at row 2 \(first seen in {path}\)"),
    ),
]


@pytest.mark.parametrize("case", ITEM_CASES, ids=lambda c: c.id)
def test_bad_item_table_is_refused_by_validate_build_and_embed(case: DataCase, tmp_path: Path, ray_session) -> None:
    path = case.make(tmp_path)
    events = write(tmp_path / "events.parquet", events_table())
    assert_refused(run_cli("data", "validate", path, "--kind", "items"), *_patterns(case, path))

    out = tmp_path / "samples"
    build = run_cli("data", "build", "--events", events, "--items", path, "--out", str(out), "--config", TINY)
    assert_refused(build, *_patterns(case, path))
    assert_nothing_written(out)

    vectors = tmp_path / "embeddings"
    assert_refused(run_cli("embed", "--items", path, "--out", str(vectors), "--config", TINY), *_patterns(case, path))
    assert_nothing_written(vectors)


# ------------------------------------------------------------------- data: inputs that must work


def test_duplicate_events_are_kept_as_impressions(tmp_path: Path) -> None:
    from seqctr.platform.data.samples import samples_from_events

    twin = events_table()
    log = pa.concat_tables([twin, twin.slice(1, 2)])  # rows 1-2 (u1: i2 @200 label 0, i3 @300 label 1) twice
    events = write(tmp_path / "events.parquet", log)
    validated = run_cli("data", "validate", events)
    assert validated.exit_code == 0, validated.output

    samples = samples_from_events(log, max_seq_len=MAX_SEQ_LEN).to_pylist()  # what `data build` runs per user shard
    assert len(samples) == log.num_rows == 8  # every impression is a sample, duplicates included
    at_300 = [s for s in samples if (s["user_id"], s["timestamp"]) == ("u1", 300)]
    assert len(at_300) == 2 and all(s["history"] == ["i1"] for s in at_300)  # a twin never sees its twin
    assert [s["history"] for s in samples if (s["user_id"], s["timestamp"]) == ("u2", 350)] == [["i1"]]


def test_failed_rebuild_leaves_the_previous_output_intact(tmp_path: Path, ray_session) -> None:
    out = tmp_path / "samples"
    for split in ("train", "val", "test"):  # a finished earlier build
        write(out / split / "part-0.parquet", pa.table({"label": pa.array([1], type=pa.int8())}))
    (out / "item_index.json").write_text("{}")
    (out / "_SUCCESS").write_text(json.dumps({"fingerprint": "an earlier build"}))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    bad = write(tmp_path / "bad.parquet", events_table(label=pa.array([1, 0, 2, 1, 0, 1], type=pa.int8())))
    items = write(tmp_path / "items.parquet", items_table())
    rebuild = run_cli("data", "build", "--events", bad, "--items", items, "--out", str(out), "--config", TINY)
    assert_refused(rebuild, re.escape(bad), "column 'label': label 2 at row 2")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".samples.")]


def test_future_dates_within_range_are_accepted(tmp_path: Path) -> None:
    year_2100 = 4_102_444_800
    path = write(tmp_path / "events.parquet", events_table(timestamp=pa.array([year_2100 + k for k in range(6)])))
    result = run_cli("data", "validate", path)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.split("\n", 1)[1])
    assert (summary["min_timestamp"], summary["max_timestamp"]) == (year_2100, year_2100 + 5)


def test_emoji_and_overlong_texts_are_validated_and_embedded(tmp_path: Path) -> None:
    from seqctr.platform.data.embeddings import TextEncoder

    long_text = "waterproof trail running shoe with a grippy sole " * 5_000  # ~250k characters
    texts = ["red running shoes 👟🔥", "帽子 🎩 blue hat", long_text]
    path = write(tmp_path / "items.parquet", items_table(["i1", "i2", "i3"], texts))
    result = run_cli("data", "validate", path, "--kind", "items")
    assert result.exit_code == 0, result.output

    # What every actor of `seqctr embed` runs on a batch of the table (Ray Data hands it numpy columns).
    encoder = TextEncoder("tiny", max_length=16)
    table = pq.read_table(path)
    batch = {name: table.column(name).to_numpy() for name in table.column_names}
    matrix = encoder(batch)["embedding"]
    assert matrix.shape == (3, 32) and np.isfinite(matrix).all()
    head = long_text[:200]  # already longer than 16 tokens: the rest of the text must not matter
    np.testing.assert_allclose(matrix[2], encoder.encode([head])[0], atol=1e-6)
    assert not np.allclose(matrix[0], encoder.encode(["red running shoes"])[0])  # the emoji are read, not dropped


# ----------------------------------------------------------------------------------------- config


def _yaml(root: Path, text: str) -> str:
    path = root / "experiment.yaml"
    path.write_text(text)
    return str(path)


CONFIG_CASES = [
    (
        "yaml-typo-in-key",
        lambda root: ["--config", _yaml(root, "train:\n  lrr: 0.01\n")],
        ("unknown key 'train.lrr' \\(did you mean 'train.lr'\\?\\)", "experiment.yaml"),
    ),
    (
        "yaml-typo-in-section",
        lambda root: ["--config", _yaml(root, "modle:\n  hidden_size: 8\n")],
        ("unknown key 'modle' \\(did you mean 'model'\\?\\)",),
    ),
    (
        "set-typo-in-key",
        lambda root: ["--config", TINY, "--set", "model.hiden_size=8"],
        ("--set model.hiden_size: unknown key 'model.hiden_size' \\(did you mean 'model.hidden_size'\\?\\)",),
    ),
    ("set-unknown-key", lambda root: ["--set", "colour=red"], ("--set colour: unknown key 'colour'$",)),
    (
        "set-wrong-type",
        lambda root: ["--set", "train.lr=fast"],
        ("train.lr \\(flag --set train.lr=...\\)", "valid number"),
    ),
    (
        "yaml-not-a-mapping",
        lambda root: ["--config", _yaml(root, "- just\n- a list\n")],
        ("experiment.yaml: expected a mapping at the top level",),
    ),
]


@pytest.mark.parametrize(("case", "args", "expect"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_names_the_key(case: str, args: Callable[[Path], list[str]], expect, tmp_path: Path) -> None:
    result = run_cli("config", "show", *args(tmp_path))
    assert_refused(result, *expect)
    assert result.output.count("\n") == 1  # one line, no dump of the config


# ------------------------------------------------------------------------------ checkpoints, registry


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("bad_inputs_ckpt") / "good", seed=0)


def _flip_byte(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    return folder


def _drop_file(folder: Path) -> Path:
    (folder / "item_index.json").unlink()
    return folder


CHECKPOINT_CASES = [
    ("flipped-byte", _flip_byte, "sha256 mismatch in model.safetensors"),
    ("missing-file", _drop_file, "missing file item_index.json"),
]


@pytest.mark.parametrize(("case", "damage", "expect"), CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_damaged_checkpoint_is_refused_by_evaluate_and_register(
    case: str, damage: Callable[[Path], Path], expect: str, checkpoint: Path, tmp_path: Path, ray_session
) -> None:
    broken = damage(Path(shutil.copytree(checkpoint, tmp_path / "broken")))
    events = write(tmp_path / "events.parquet", events_table())
    evaluate = run_cli("evaluate", "--checkpoint", str(broken), "--events", events)
    assert_refused(evaluate, re.escape(str(broken)), expect)

    root = tmp_path / "registry"
    register = run_cli("models", "register", str(broken), "--name", "seqctr", "--root", str(root))
    assert_refused(register, re.escape(str(broken)), expect)
    assert Registry(root).list_models() == []  # nothing half-registered
    assert not list(root.glob("seqctr/versions/*"))


@pytest.fixture
def registry_root(checkpoint: Path, tmp_path: Path) -> Path:
    """A registry with seqctr@v0001 whose `production` alias names v0009, a version that does not exist."""
    root = tmp_path / "registry"
    Registry(root).register("seqctr", checkpoint, run_id="test")
    (root / "seqctr" / "aliases.json").write_text(json.dumps({"aliases": {"production": "v0009"}, "history": []}))
    return root


REGISTRY_CASES = [
    (
        "alias-to-missing-version",
        "seqctr@production",
        "alias 'production' of model 'seqctr' points to version v0009, which does not exist",
    ),
    ("unknown-alias", "seqctr@staging", "unknown alias 'staging' of model 'seqctr' \\(aliases: production\\)"),
    ("unknown-version", "seqctr@v7", "unknown version v0007 of model 'seqctr' \\(versions: v0001\\)"),
    ("unknown-model", "ctr@production", "unknown model 'ctr' in registry .* \\(models: seqctr\\)"),
]


@pytest.mark.parametrize(("case", "ref", "expect"), REGISTRY_CASES, ids=[c[0] for c in REGISTRY_CASES])
def test_registry_ref_pointing_nowhere_is_refused(case: str, ref: str, expect: str, registry_root: Path) -> None:
    assert_refused(run_cli("models", "show", ref, "--root", str(registry_root)), expect)


def test_serve_refuses_a_dangling_alias_before_starting_anything(registry_root: Path) -> None:
    serve = run_cli(
        "serve", "--model", "registry://seqctr@production", "--config", TINY, "--set", f"registry.root={registry_root}"
    )
    assert_refused(serve, "alias 'production' of model 'seqctr' points to version v0009, which does not exist")


def test_evaluate_refuses_a_dangling_alias(registry_root: Path, ray_session, monkeypatch) -> None:
    monkeypatch.setenv("SEQCTR_REGISTRY", str(registry_root))
    evaluate = run_cli("evaluate", "--checkpoint", "registry://seqctr@production")
    assert_refused(evaluate, "alias 'production' of model 'seqctr' points to version v0009, which does not exist")


# -------------------------------------------------------------------------------------------- API


@pytest.fixture(scope="module")
def api(ray_session, checkpoint: Path, tmp_path_factory) -> str:
    """One Serve app for the module, deployed the way `seqctr serve --config FILE` does it."""
    from ray import serve

    from seqctr.cli.serve import deploy

    settings = [
        "serve.min_replicas=1",
        "serve.max_replicas=1",
        f"serve.max_candidates={MAX_CANDIDATES}",
        f"serve.max_body_bytes={MAX_BODY_BYTES}",
    ]
    config = tmp_path_factory.mktemp("bad_inputs_serve") / "experiment.yaml"
    config.write_text(tiny_serving_config(*settings).to_yaml())
    port = free_port()
    result = deploy(
        {"config": str(config), "overrides": []}, {"model": str(checkpoint)}, name=APP_NAME, port=port, timeout_s=180
    )
    assert result["action"] == "started"
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@dataclass(frozen=True)
class ApiCase:
    id: str
    request: dict  # httpx.post keyword arguments (json= or content= + headers=)
    status: int
    loc: list[str | int]  # prefix of the `loc` of one of the errors in the answer's `detail`
    msg: str  # regex on that error's `msg`


JSON = {"Content-Type": "application/json"}
LONG_TEXT = "waterproof trail running shoe " * 2_000  # ~60 kB, far beyond the encoder's 16 tokens

API_CASES = [
    ApiCase(
        "candidates-10k",
        {"json": {"history": [], "candidates": list(range(10_000))}},
        422,
        ["body", "candidates"],
        f"at most {MAX_CANDIDATES} candidates .*serve.max_candidates.*got 10000",
    ),
    ApiCase(
        "not-json",
        {"content": b'{"history": [], "candidates": ["i1"', "headers": JSON},
        422,
        ["body"],
        "JSON decode error",
    ),
    ApiCase(
        "invalid-utf8-body",
        {"content": b'{"history": [], "candidates": ["caf\xe9"]}', "headers": JSON},
        422,
        ["body"],
        "JSON decode error",
    ),
    ApiCase(
        "wrong-content-type",
        {"content": b'{"history": [], "candidates": ["i1"]}', "headers": {"Content-Type": "text/plain"}},
        415,
        ["header", "Content-Type"],
        "Content-Type must be application/json, got text/plain",
    ),
    ApiCase(
        "form-content-type",
        {"data": {"history": "i1", "candidates": "i2"}},
        415,
        ["header", "Content-Type"],
        "got application/x-www-form-urlencoded",
    ),
    ApiCase(
        "body-over-limit",
        {"json": {"history": ["x" * 100] * 12_000, "candidates": ["i1"]}},
        413,
        ["body"],
        f"request body larger than {MAX_BODY_BYTES} bytes \\(serve.max_body_bytes\\)",
    ),
    ApiCase("empty-body", {"content": b"", "headers": JSON}, 422, ["body"], "Field required"),
    ApiCase("json-array-body", {"json": [["i1"], ["i2"]]}, 422, ["body"], "valid dictionary"),
    ApiCase(
        "unpaired-surrogate-id",
        {"content": b'{"history": [], "candidates": ["\\ud800"]}', "headers": JSON},
        422,
        ["body", "candidates", 0],
        "unable to parse raw data as a unicode string",
    ),
    ApiCase(
        "unpaired-surrogate-text",
        {"content": b'{"history": [], "candidates": [{"item_id": "n", "text": "shoe \\udfff"}]}', "headers": JSON},
        422,
        ["body", "candidates", 0],
        "valid Unicode",
    ),
    ApiCase(
        "text-not-a-string",
        {"json": {"history": [], "candidates": [{"item_id": "n", "text": ["x"]}]}},
        422,
        ["body", "candidates", 0],
        "valid string",
    ),
]


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_answers_bad_requests_with_a_clear_status(case: ApiCase, api: str) -> None:
    response = httpx.post(f"{api}/v1/score", timeout=60, **case.request)
    assert response.status_code == case.status, response.text[:500]
    errors = response.json()["detail"]
    assert any(e["loc"][: len(case.loc)] == case.loc and re.search(case.msg, e["msg"]) for e in errors), errors


def test_history_of_100k_items_is_cut_to_max_seq_len(api: str) -> None:
    history = list(range(100_000))
    body = {"history": history, "candidates": ["i1", "i2"], "explain": True}
    response = httpx.post(f"{api}/v1/score", json=body, timeout=60)
    assert response.status_code == 200, response.text[:500]
    out = response.json()
    assert out["history"] == [str(i) for i in history[-MAX_SEQ_LEN:]]  # the most recent, oldest first
    assert all(len(item["attention"]) == MAX_SEQ_LEN for item in out["items"])
    same = httpx.post(f"{api}/v1/score", json={**body, "history": history[-MAX_SEQ_LEN:]}, timeout=60).json()
    assert same["scores"] == out["scores"]  # nothing older than the cut changes a score


def test_cold_start_texts_with_emoji_or_beyond_max_length_are_embedded(api: str) -> None:
    candidates = [{"item_id": "new-1", "text": "red running shoes 👟🔥"}, {"item_id": "new-2", "text": LONG_TEXT}]
    response = httpx.post(f"{api}/v1/score", json={"history": ["i1"], "candidates": candidates}, timeout=60)
    assert response.status_code == 200, response.text[:500]
    assert [i["source"] for i in response.json()["items"]] == ["text", "text"]
    head = {"item_id": "new-2", "text": LONG_TEXT[:200]}  # longer than 16 tokens already
    cut = httpx.post(f"{api}/v1/score", json={"history": ["i1"], "candidates": [head]}, timeout=60).json()
    assert cut["scores"][0] == pytest.approx(response.json()["scores"][1], abs=1e-6)
