"""Champion and challenger: the split (pure functions), the variants of one scorer (the plain class), and
two apps on Ray Serve: one whose shadow's model raises, one whose weights change under load."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from serving_helpers import free_port, offline_scores, tiny_serving_config

from seqctr.platform.config import ConfigError
from seqctr.platform.model.predictor import load_model
from seqctr.serving.app import model_user_config, variants_user_config
from seqctr.serving.client import AsyncCTRClient, CTRClient
from seqctr.serving.deployments import CTRScorer, ModelSpec
from seqctr.serving.variants import VariantSpec, VariantTable, route_users, sampled, shadow_seed, user_points

USERS = [f"u{k}" for k in range(10_000)]
HISTORY = [f"i{k}" for k in range(8)]
CANDIDATES = ["i1", "i20", "i33", "never-seen"]
RAISES = "raises"  # a checkpoint folder whose name holds this gets a model that raises (raising_loader)


def raising_loader(path: str, device: str):
    """The real loader; under a folder named *raises* the model's scoring raises (a broken challenger)."""
    loaded = load_model(path, device)
    if RAISES in Path(path).name:

        def broken(*args, **kwargs):
            raise RuntimeError("this shadow model is broken")

        loaded.model.score_groups = broken
    return loaded


# ----------------------------------------------------------------------------- the split (pure)


@pytest.mark.parametrize("weights", [{"a": 0.9, "b": 0.1}, {"a": 5, "b": 3, "c": 2}, {"a": 1, "off": 0, "b": 1}])
def test_split_ratios_are_the_weights(weights):
    names = route_users(USERS, weights)
    total = sum(weights.values())
    for name, weight in weights.items():
        share = names.count(name) / len(USERS)
        assert abs(share - weight / total) < 0.015, (name, share)  # ~4.5 sigma of a 10k binomial at 0.5


def test_a_user_is_sticky_and_only_the_moved_range_changes_hands():
    before = route_users(USERS, {"a": 0.9, "b": 0.1})
    assert route_users(USERS, {"a": 0.9, "b": 0.1}) == before  # the same users, the same variants
    assert route_users(list(reversed(USERS)), {"a": 0.9, "b": 0.1}) == list(reversed(before))
    after = route_users(USERS, {"a": 0.8, "b": 0.2})
    moved = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert set(moved) == {("a", "b")}  # nobody went back from b to a
    assert abs(len(moved) / len(USERS) - 0.1) < 0.015


def test_missing_user_id_is_random_and_points_are_uniform():
    import random

    rng = random.Random(7)
    points = user_points([None] * 2000, rng=rng)
    assert 0.45 < points.mean() < 0.55 and len(set(points.tolist())) == 2000
    hashed = user_points(USERS)
    assert hashed.min() >= 0 and hashed.max() < 1
    assert np.histogram(hashed, bins=10, range=(0, 1))[0].min() > 900  # ~1000 a decile


def test_the_request_paths_hash_is_hash64_bit_for_bit():
    from seqctr.platform.model.features import hash64
    from seqctr.serving.variants import ROUTE_SEED, hash64_one, user_point

    ids = [*USERS, "", "é", "日本語のユーザー", "🙂" * 9, "x" * 8, "y" * 17]
    with np.errstate(over="ignore"):
        for seed in (0, ROUTE_SEED, shadow_seed("s")):
            assert [hash64_one(u, seed) for u in ids] == hash64(ids, seed=seed).tolist()
    assert [user_point(u) for u in USERS] == user_points(USERS).tolist()


def test_table_route_equals_the_vectorised_split():
    specs = {"a": VariantSpec(model="x", weight=0.7), "b": VariantSpec(model="y", weight=0.3)}
    table = VariantTable.build([_variant(n, s) for n, s in specs.items()])
    expected = route_users(USERS[:500], {"a": 0.7, "b": 0.3})
    assert [table.route(u).name for u in USERS[:500]] == expected


def test_shadow_sample_is_its_share_and_stable_per_user():
    seed = shadow_seed("s")
    picked = [sampled(u, seed, 0.25) for u in USERS]
    assert abs(sum(picked) / len(USERS) - 0.25) < 0.015
    assert picked == [sampled(u, seed, 0.25) for u in USERS]
    # independent of the routing split: the shadow's sample of b's users is a quarter too
    b_users = [u for u, name in zip(USERS, route_users(USERS, {"a": 0.5, "b": 0.5}), strict=True) if name == "b"]
    assert abs(sum(sampled(u, seed, 0.25) for u in b_users) / len(b_users) - 0.25) < 0.03


def _variant(name, spec):
    from seqctr.serving.variants import Variant

    return Variant(name, spec, model=None)


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "variants, message",
    [
        ("{a: {model: x, weight: 0}}", "must sum to > 0"),
        ("{a: {model: x, weight: 1}, s: {model: y, shadow: true, weight: 2}}", "share of requests"),
        ("[{name: a, model: x}, {name: a, model: y}]", "given twice"),
        ("{'a b': {model: x}}", "must match"),
    ],
)
def test_misconfigured_variants_are_config_errors_naming_serve_variants(variants, message):
    with pytest.raises(ConfigError, match="serve.variants") as err:
        tiny_serving_config(f"serve.variants={variants}")
    assert message in str(err.value)


def test_unknown_registry_ref_is_a_config_error_naming_the_variant(tmp_path):
    cfg = tiny_serving_config(
        f"registry.root={tmp_path / 'registry'}", "serve.variants={champion: {model: 'registry://seqctr@nope'}}"
    )
    with pytest.raises(ConfigError, match=r"serve\.variants\.champion\.model=registry://seqctr@nope"):
        model_user_config(cfg)
    assert "resolved" not in variants_user_config(cfg, strict=False)["variants"]["champion"]  # left to replicas


def test_a_user_config_with_zero_weights_is_refused_naming_serve_variants():
    with pytest.raises(ValidationError, match="serve.variants"):
        ModelSpec.model_validate({"variants": {"a": {"model": "x", "weight": 0}}})
    with pytest.raises(ValidationError, match="serve.variants"):
        ModelSpec.model_validate({})


# ----------------------------------------------------------------------------- one scorer, several models


# The two tests on Ray Serve run before the in-process CTRScorer tests below. Run after them, in one
# full-module run in CI, the first deploy failed to pickle the deployment class ("cannot pickle
# '_asyncio.Task'"): the in-process tests drive the scorer's @serve.batch methods in this process.


async def burst(url: str, users: list[str]) -> list:
    async with AsyncCTRClient(url, retries=0, timeout=60) as c:
        return await asyncio.gather(*(c.score(HISTORY, CANDIDATES, user_id=u) for u in users))


def test_on_serve_the_variant_scores_and_a_raising_shadow_fails_no_request(serve_port, checkpoints, tmp_path):
    from ray import cloudpickle, serve

    from seqctr.serving.app import make_app

    broken = broken_copy(checkpoints["a"], tmp_path)
    variants = {
        "champion": {"model": str(checkpoints["a"]), "weight": 0.5},
        "challenger": {"model": str(checkpoints["b"]), "weight": 0.5},
        "broken": {"model": str(broken), "shadow": True, "weight": 1.0},
    }
    log = tmp_path / "impressions"  # one file per request (4 candidates)
    app = make_app(
        tiny_serving_config(*SERVE_SETTINGS, f"serve.impressions={log}", "serve.impressions_flush_rows=4"),
        loader=raising_loader,
        scorer_cpus=0.5,
        encoder_cpus=0.25,
        user_config={"variants": variants},
    )
    users = USERS[:30]
    url = f"http://127.0.0.1:{serve_port}"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas unpickle raising_loader by value
    try:
        serve.run(app, name="seqctr_shadow", route_prefix="/")
        answers = asyncio.run(burst(url, users))  # concurrent: shadow and served jobs share batches
        with CTRClient(url, retries=0) as client:
            again = client.score(HISTORY, CANDIDATES, user_id=users[0])
            echoed = httpx.post(
                url + "/v1/score",
                json={"user_id": "u1", "history": HISTORY, "candidates": CANDIDATES},
                headers={"X-Request-ID": "req-42"},
                timeout=30,
            )
            deadline = time.monotonic() + PROGRESS_S
            while (info := client.model_info()).shadows.get("broken", {}).get("failed", 0) < len(users) + 2 or (
                info.impressions["written"] < 4 * (len(users) + 2)
            ):
                assert time.monotonic() < deadline, (info.shadows, info.impressions)
                time.sleep(0.5)
    finally:
        serve.delete("seqctr_shadow")
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    expected = {"champion": offline_scores(checkpoints["a"], HISTORY, CANDIDATES)}
    expected["challenger"] = offline_scores(checkpoints["b"], HISTORY, CANDIDATES)
    assert [a.variant for a in answers] == route_users(users, {"champion": 0.5, "challenger": 0.5})
    for answer in answers:  # every request answered by its variant's model, the shadow's failure unseen
        np.testing.assert_allclose(answer.scores, expected[answer.variant], atol=1e-5)
    assert again.variant == answers[0].variant
    assert len({a.request_id for a in answers}) == len(users)
    assert echoed.status_code == 200 and echoed.json()["request_id"] == "req-42"
    assert {v.name: v.shadow for v in info.variants} == {"champion": False, "challenger": False, "broken": True}
    assert info.shadows["broken"] == {"failed": len(users) + 2}
    logged = read_log(str(log)).to_pylist()  # served rows only: the shadow never scored
    assert {r["role"] for r in logged} == {"served"} and len(logged) == 4 * (len(users) + 2)
    assert {r["request_id"] for r in logged} == {a.request_id for a in [*answers, again]} | {"req-42"}
    assert {(r["request_id"], r["variant"]) for r in logged} >= {(a.request_id, a.variant) for a in answers}


def _stream(url: str, stop: threading.Event, results: list, offset: int) -> None:
    with CTRClient(url, retries=0, timeout=60) as c:
        k = offset
        while not stop.is_set():
            try:
                results.append(c.score(HISTORY, CANDIDATES, user_id=USERS[k % len(USERS)]))
            except Exception as err:  # noqa: BLE001 - any failure is what the test counts
                results.append(err)
            k += 7


def test_on_serve_a_weight_change_is_a_user_config_change_with_no_failed_request(serve_port, checkpoints, tmp_path):
    from seqctr.cli.serve import deploy, serve_args

    a, b = str(checkpoints["a"]), str(checkpoints["b"])
    config = tmp_path / "experiment.yaml"
    variants = f"{{champion: {{model: '{a}', weight: 1}}, challenger: {{model: '{b}', weight: 0}}}}"
    config.write_text(tiny_serving_config(*SERVE_SETTINGS, f"serve.variants={variants}").to_yaml())
    args, _, cfg = serve_args(config, [])  # what `seqctr serve --config FILE` deploys
    name, url = "seqctr_variants", f"http://127.0.0.1:{serve_port}"
    started = deploy(args, model_user_config(cfg), name=name, port=serve_port, timeout_s=PROGRESS_S)
    assert started["action"] == "started" and [v["weight"] for v in started["model"]["variants"]] == [1, 0]
    loaded_at = {v["name"]: v["loaded_at"] for v in started["model"]["variants"]}

    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_stream, args=(url, stop, results, k)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        while len(results) < 8:  # the stream is flowing before the change
            threading.Event().wait(0.05)
        swapped = model_user_config(cfg)  # the same args, another user_config: Serve reconfigures in place
        swapped["variants"]["champion"]["weight"], swapped["variants"]["challenger"]["weight"] = 0, 1
        changed = deploy(args, swapped, name=name, port=serve_port, timeout_s=PROGRESS_S)
        after = len(results)
        while len(results) < after + 8:
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert changed["action"] == "reloaded" and changed["model"]["last_reload"]["ok"] is True
    assert {v["name"]: v["loaded_at"] for v in changed["model"]["variants"]} == loaded_at  # nothing reloaded
    variants_seen = [r.variant for r in results]
    assert variants_seen[:8] == ["champion"] * 8 and variants_seen[-1] == "challenger"
    expected = {"champion": offline_scores(checkpoints["a"], HISTORY, CANDIDATES)}
    expected["challenger"] = offline_scores(checkpoints["b"], HISTORY, CANDIDATES)
    for r in results:  # every answer wholly its variant's
        np.testing.assert_allclose(r.scores, expected[r.variant], atol=1e-5)


# ----------------------------------------------------------------------------- the impression log


def read_log(root: str):
    import pyarrow.dataset as ds

    return (
        ds.dataset(root, format="parquet").to_table().sort_by([("logged_at", "ascending"), ("position", "ascending")])
    )


def run(coro):
    return asyncio.run(coro)


def broken_copy(checkpoint: Path, root: Path) -> Path:
    target = root / f"challenger-{RAISES}"
    if not target.exists():
        shutil.copytree(checkpoint, target)
    return target


def scorer_with(variants: dict[str, dict]) -> CTRScorer:
    scorer = CTRScorer(tiny_serving_config(), None, raising_loader, torch_threads=0)
    run(scorer.reconfigure({"variants": variants}))
    return scorer


def test_requests_go_to_their_users_variant_and_shadow_scores_are_logged(checkpoints, tmp_path, caplog):
    broken = broken_copy(checkpoints["a"], tmp_path)
    scorer = scorer_with(
        {
            "champion": {"model": str(checkpoints["a"]), "weight": 0.5},
            "challenger": {"model": str(checkpoints["b"]), "weight": 0.5},
            "mirror": {"model": str(checkpoints["b"]), "shadow": True, "weight": 1.0},
            "broken": {"model": str(broken), "shadow": True, "weight": 1.0},
        }
    )
    expected = {
        name: offline_scores(checkpoints[k], HISTORY, CANDIDATES)
        for name, k in [("champion", "a"), ("challenger", "b")]
    }
    users = USERS[:40]
    routed = route_users(users, {"champion": 0.5, "challenger": 0.5})
    log = logging.getLogger("ray.serve")
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ray.serve")

    async def requests():
        out = []
        for user in users:
            body = {"user_id": user, "history": HISTORY, "candidates": CANDIDATES, "request_id": f"r-{user}"}
            out.append(await scorer.score(body))
            await scorer.shadows_done()  # the plain class never yields: at most 4 x max_batch_size would wait
        return out

    try:
        answers = run(requests())
    finally:
        log.removeHandler(caplog.handler)
    assert [a["variant"] for a in answers] == routed
    for answer in answers:
        np.testing.assert_allclose(answer["scores"], expected[answer["variant"]], atol=1e-5)
    info = scorer.info()
    assert info["shadows"] == {"broken": {"failed": 40}, "mirror": {"scored": 40}}
    assert {v["name"]: v["shadow"] for v in info["variants"]} == {
        "champion": False,
        "challenger": False,
        "mirror": True,
        "broken": True,
    }
    import json

    records = [json.loads(r.getMessage()) for r in caplog.records if '"shadow_scores"' in r.getMessage()]
    assert {r["request_id"] for r in records} == {f"r-{u}" for u in users}
    for record in records:  # the mirror (model b) beside what was served
        np.testing.assert_allclose(record["shadow"]["scores"], expected["challenger"], atol=1e-5)
        np.testing.assert_allclose(record["served"]["scores"], expected[record["served"]["variant"]], atol=1e-5)
    failures = [r.getMessage() for r in caplog.records if "shadow broken failed" in r.getMessage()]
    assert len(failures) == 40 and "request r-u0" in " ".join(failures)


def test_a_model_that_raises_fails_only_its_own_jobs_of_a_batch(checkpoints, tmp_path):
    """A batch holds the jobs of every variant and shadow; the broken model's error goes to its jobs alone."""
    from seqctr.serving.deployments import prepare_job, scored

    broken = broken_copy(checkpoints["a"], tmp_path)
    scorer = scorer_with(
        {"champion": {"model": str(checkpoints["a"])}, "broken": {"model": str(broken), "shadow": True}}
    )
    good, bad = scorer._variants.get("champion").model, scorer._variants.get("broken").model
    body = {"history": HISTORY, "candidates": CANDIDATES}
    results = scorer._score_items(
        [(good, prepare_job(good, body)), (bad, prepare_job(bad, body)), (good, prepare_job(good, body))]
    )
    expected = offline_scores(checkpoints["a"], HISTORY, CANDIDATES)
    for result in (results[0], results[2]):
        np.testing.assert_allclose(scored(result)[0], expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="broken"):
        scored(results[1])


def test_weights_change_without_loading_and_a_failed_load_keeps_the_variant(checkpoints):
    scorer = scorer_with(
        {"champion": {"model": str(checkpoints["a"])}, "challenger": {"model": str(checkpoints["b"]), "weight": 0}}
    )
    before = {v["name"]: v["loaded_at"] for v in scorer.info()["variants"]}
    assert run(scorer.score({"user_id": "u1", "history": HISTORY, "candidates": CANDIDATES}))["variant"] == "champion"
    run(
        scorer.reconfigure(
            {
                "variants": {
                    "champion": {"model": str(checkpoints["a"]), "weight": 0},
                    "challenger": {"model": str(checkpoints["b"])},
                }
            }
        )
    )
    info = scorer.info()
    assert {v["name"]: v["loaded_at"] for v in info["variants"]} == before  # re-weighted, nothing reloaded
    assert run(scorer.score({"user_id": "u1", "history": HISTORY, "candidates": CANDIDATES}))["variant"] == "challenger"
    assert info["name"] == "tiny" and info["checkpoint"] == str(checkpoints["b"])  # the heaviest served one
    run(
        scorer.reconfigure(
            {"variants": {"champion": {"model": str(checkpoints["a"])}, "challenger": {"model": "/nowhere/x"}}}
        )
    )
    info = scorer.info()
    assert info["last_reload"]["ok"] is False and "serve.variants.challenger" in info["last_reload"]["error"]
    assert {v["name"]: v["checkpoint"] for v in info["variants"]}["challenger"] == str(checkpoints["b"])
    run(scorer.reconfigure({"model": str(checkpoints["a"])}))  # back to a single model
    out = run(scorer.score({"user_id": "u1", "history": HISTORY, "candidates": CANDIDATES}))
    assert out["variant"] is None and scorer.info()["variants"] is None


def test_a_new_replica_without_its_served_variant_fails_but_without_a_shadow_serves(checkpoints):
    with pytest.raises(RuntimeError, match="serve.variants.champion"):
        scorer_with({"champion": {"model": "/nowhere/x"}})
    scorer = scorer_with({"champion": {"model": str(checkpoints["a"])}, "s": {"model": "/nowhere/y", "shadow": True}})
    assert [v["name"] for v in scorer.info()["variants"]] == ["champion"]
    assert run(scorer.score({"history": HISTORY, "candidates": CANDIDATES}))["variant"] == "champion"


# ----------------------------------------------------------------------------- on Ray Serve

SERVE_SETTINGS = [
    "serve.min_replicas=1",
    "serve.max_replicas=1",  # one replica: /v1/model's counts are the whole app's
    "serve.max_batch_size=8",
    "serve.batch_wait_timeout_s=0.002",
]
PROGRESS_S = 120  # a deadline for background work to show up, not a latency bound


@pytest.fixture(scope="module")
def serve_port(ray_session):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_impression_log_round_trips_in_files_of_flush_rows(where, tmp_path, request):
    from seqctr.serving.impressions import ImpressionLog

    root = str(tmp_path / "log") if where == "local" else request.getfixturevalue("s3_root") + "/impressions"
    log = ImpressionLog(root, flush_rows=6, flush_s=3600, max_rows=1000)
    sent = {}
    for k in range(5):  # 3 candidates each: a file every 2 requests, the last one written by close()
        items, scores = [f"i{k}", f"i{k + 1}", "new"], [0.1 * k, 0.2, 0.3]
        log.add(f"r{k}", f"u{k}" if k else None, "champion", "v0001", "served", items, scores)
        for pos, (item, score) in enumerate(zip(items, scores, strict=True)):
            sent[(f"r{k}", item)] = (f"u{k}" if k else None, pos, pytest.approx(score, abs=1e-6))
    log.close()
    stats = log.stats()
    assert (stats["buffered"], stats["written"], stats["files"], stats["dropped"], stats["errors"]) == (0, 15, 3, 0, [])
    table = read_log(root)
    got = {(r["request_id"], r["item_id"]): (r["user_id"], r["position"], r["score"]) for r in table.to_pylist()}
    assert table.num_rows == 15 and got == sent
    assert set(table["variant"].to_pylist()) == {"champion"} and set(table["role"].to_pylist()) == {"served"}


def test_impression_log_memory_is_bounded(tmp_path):
    from seqctr.serving.impressions import ImpressionLog

    log = ImpressionLog(str(tmp_path / "log"), flush_rows=8, flush_s=3600, max_rows=8)
    log.add("r1", "u1", "a", "v1", "served", ["i1"] * 5, [0.5] * 5)
    log.add("r2", "u2", "a", "v1", "served", ["i1"] * 5, [0.5] * 5)  # 5 + 5 > 8: dropped, not queued
    assert log.stats()["buffered"] == 5 and log.stats()["dropped"] == 5
    log.close()
    assert read_log(str(tmp_path / "log")).num_rows == 5


def test_scorer_logs_served_and_shadow_scores_with_their_request_ids(checkpoints, tmp_path):
    root = str(tmp_path / "impressions")
    scorer = CTRScorer(tiny_serving_config(f"serve.impressions={root}"), None, raising_loader, torch_threads=0)
    variants = {
        "champion": {"model": str(checkpoints["a"]), "weight": 0.5},
        "challenger": {"model": str(checkpoints["b"]), "weight": 0.5},
        "mirror": {"model": str(checkpoints["b"]), "shadow": True, "weight": 1.0},
    }
    run(scorer.reconfigure({"variants": variants}))
    users = USERS[:10]

    async def requests():
        for user in users:
            await scorer.score(
                {"user_id": user, "history": HISTORY, "candidates": CANDIDATES, "request_id": f"r-{user}"}
            )
            await scorer.shadows_done()

    run(requests())
    scorer.close_impressions()
    table = read_log(root).to_pylist()
    served = {(r["request_id"], r["item_id"]): r for r in table if r["role"] == "served"}
    shadow = {(r["request_id"], r["item_id"]): r for r in table if r["role"] == "shadow"}
    assert served.keys() == shadow.keys() == {(f"r-{u}", c) for u in users for c in CANDIDATES}
    routed = dict(zip(users, route_users(users, {"champion": 0.5, "challenger": 0.5}), strict=True))
    expected = {"champion": offline_scores(checkpoints["a"], HISTORY, CANDIDATES)}
    expected["challenger"] = expected["mirror"] = offline_scores(checkpoints["b"], HISTORY, CANDIDATES)
    for rows in (served, shadow):
        for row in rows.values():
            assert row["user_id"] == row["request_id"][2:]
            if row["role"] == "served":
                assert row["variant"] == routed[row["user_id"]]
            assert row["score"] == pytest.approx(float(expected[row["variant"]][row["position"]]), abs=1e-5)
    assert {r["variant"] for r in shadow.values()} == {"mirror"}
