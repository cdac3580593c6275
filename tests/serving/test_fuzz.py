"""Schemathesis against the live endpoint: every operation of its OpenAPI schema is fuzzed over HTTP
(valid and invalid bodies, missing and wrong headers), and every answer must pass schemathesis's
checks: never a 500, only documented status codes, bodies that match the documented schemas, invalid
input refused, valid input accepted.

The schema is the app's own (`fastapi_app.openapi()`, built at import without a server, so collecting
starts nothing); `test_live_schema_is_the_fuzzed_one` checks that the running endpoint serves the same.
(Schemathesis's lazy `from_fixture` loader does not run under pytest 9, whose nodes have no `_nodeid`.)
The requests go to a real Serve app that requires an API key, as a production deployment would, so the
auth checks (missing or wrong key = 401) run too.
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from serving_helpers import free_port, tiny_serving_config

from seqctr.cli.serve import api_key_env_vars, deploy
from seqctr.serving.app import fastapi_app

APP = "seqctr_fuzz"
KEY_ENV = "SEQCTR_FUZZ_API_KEY"
KEY = "fuzz-key-123"
MAX_EXAMPLES = 30  # generated cases per operation, besides schemathesis's deterministic coverage cases
SLOW_MACHINE = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


@pytest.fixture(scope="module")
def fuzz_endpoint(ray_session, checkpoints, tmp_path_factory) -> str:
    from ray import serve

    config = tmp_path_factory.mktemp("fuzz") / "experiment.yaml"
    # serve.max_candidates stays at its default (1000): the schema cannot state a config-dependent limit, so a
    # lower one would make schema-valid requests fail (that 422 is covered by tests/test_bad_inputs.py).
    overrides = ["serve.min_replicas=1", "serve.max_replicas=1", f"serve.api_key_env={KEY_ENV}"]
    config.write_text(tiny_serving_config(*overrides).to_yaml())
    os.environ[KEY_ENV] = KEY
    port = free_port()
    args = {"config": str(config), "overrides": []}
    result = deploy(
        args, {"model": str(checkpoints["a"])}, name=APP, port=port, env_vars=api_key_env_vars(KEY_ENV), timeout_s=180
    )
    assert result["action"] == "started"
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    os.environ.pop(KEY_ENV, None)


schema = schemathesis.openapi.from_dict(fastapi_app.openapi())
schema.config.generation.update(max_examples=MAX_EXAMPLES)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=SLOW_MACHINE)
def test_endpoint_conforms_to_its_openapi_schema(case, fuzz_endpoint: str) -> None:
    case.call_and_validate(base_url=fuzz_endpoint, headers={"X-API-Key": KEY}, timeout=60)


def test_live_schema_is_the_fuzzed_one(fuzz_endpoint: str) -> None:
    live = httpx.get(f"{fuzz_endpoint}/openapi.json", timeout=30).json()
    assert live == fastapi_app.openapi()
    paths = live["paths"]
    for path in ("/v1/score", "/v1/rank"):
        assert {"200", "401", "413", "415", "422", "500"} <= paths[path]["post"]["responses"].keys()
    assert {"200", "401", "503"} <= paths["/v1/model"]["get"]["responses"].keys()
