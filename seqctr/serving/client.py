"""A typed Python client for the CTR endpoint.

    from seqctr.serving.client import CTRClient
    with CTRClient("http://127.0.0.1:8000") as client:
        print(client.rank(history=["i1", "i2"], candidates=["i3", "i4", "i5"], k=2).items)

Scoring is a pure function of its input, so the client retries it safely: on connection errors,
timeouts and 503 (no replica ready, e.g. during a rolling update), with exponential backoff.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from seqctr.serving.schemas import (
    CandidateItem,
    ModelInfo,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
)

API_KEY_HEADER = "X-API-Key"
Candidate = str | int | CandidateItem | dict[str, Any]
R = TypeVar("R", bound=BaseModel)


class CTRClientError(RuntimeError):
    """The endpoint answered with an error; `status` is the HTTP status, `detail` its JSON detail."""

    def __init__(self, status: int, detail: Any, url: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class CTRClient:
    """score / rank / model_info over HTTP; `retries` extra attempts on connection errors and 503."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> CTRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def score(
        self,
        history: Sequence[str | int],
        candidates: Sequence[Candidate],
        *,
        user_id: str | None = None,
        explain: bool = False,
    ) -> ScoreResponse:
        """Click probabilities of `candidates` (ids, or {"item_id", "text"} for new items), in order."""
        request = ScoreRequest(
            user_id=user_id, history=list(history), candidates=list(candidates), explain=explain
        )
        return self._request("POST", "/v1/score", ScoreResponse, request.model_dump(exclude_none=True))

    def rank(
        self,
        history: Sequence[str | int],
        candidates: Sequence[Candidate],
        k: int = 10,
        *,
        user_id: str | None = None,
        explain: bool = False,
    ) -> RankResponse:
        """The k best candidates, best first."""
        request = RankRequest(
            user_id=user_id, history=list(history), candidates=list(candidates), explain=explain, k=k
        )
        return self._request("POST", "/v1/rank", RankResponse, request.model_dump(exclude_none=True))

    def model_info(self) -> ModelInfo:
        """Name, version, metrics and config of the served model, and the latest reload attempt."""
        return self._request("GET", "/v1/model", ModelInfo)

    def _request(self, method: str, path: str, out: type[R], body: dict[str, Any] | None = None) -> R:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError:  # refused, reset, timed out: nothing was scored, try again
                if attempt >= self.retries:
                    raise
            else:
                if response.status_code != 503 or attempt >= self.retries:
                    if response.is_error:
                        raise CTRClientError(response.status_code, _detail(response), self.url + path)
                    return out.model_validate(response.json())
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text
