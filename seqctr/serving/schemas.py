"""Request and response models of the HTTP API (`/v1/score`, `/v1/rank`, `/v1/model`).

Pydantic does the checking, so every bad request is a 422 whose `loc` names the field (FastAPI's
standard error shape). Limits that depend on the config (`serve.max_candidates`) are checked by the
ingress with `candidates_error`, which returns an error of the same shape.

    {"user_id": "u1", "history": ["i3", {"item_id": 17, "timestamp": 1717000042}],
     "candidates": ["i9", {"item_id": "new", "text": "red shoes"}]}

Item ids may be strings or integers; both are compared as strings, as in the training data.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from seqctr.platform.data.contract import MAX_UNIX_SECONDS  # as the training data's timestamp check


def _unicode(text: str) -> str:
    """JSON may escape an unpaired surrogate ("\\ud800"), which Python reads into a str that cannot be
    encoded: refused here (422) rather than crashing the tokenizer (500). (Pydantic's strict strings,
    such as item ids, refuse it themselves.)"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (an unpaired surrogate such as \\ud800 is not)") from None
    return text


def _whole_number(value: Any) -> Any:
    """3.0 -> 3: JSON Schema's `integer` includes numbers with a zero fraction, and some JSON encoders
    write every number as a float. Anything else (3.5, "3", true) is left to StrictInt to refuse."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _id_text(value: str | int) -> str:
    return str(value)


Text = Annotated[str, AfterValidator(_unicode)]
"""A string that is valid Unicode (encodable as UTF-8)."""

Integer = Annotated[StrictInt, BeforeValidator(_whole_number)]
"""An integer as JSON Schema means it: 3 or 3.0, never "3" or true."""

# min_length in the schema itself, so the OpenAPI document says what is refused: an empty id.
ItemId = Annotated[Annotated[StrictStr, StringConstraints(min_length=1)] | Integer, AfterValidator(_id_text)]
"""A string or integer item id, turned into its string form (`17` and `"17"` are the same item)."""

ItemSource = Literal["known", "text", "hashed"]
# Non-negative and below 2^53 (exact as a float; a larger count would overflow the model's float32 inputs).
Count = Annotated[StrictInt, Field(ge=0, le=2**53), BeforeValidator(_whole_number)]  # in the OpenAPI schema too
ContextValue = (
    Annotated[StrictStr, StringConstraints(max_length=1000)]
    | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | StrictBool
    | None
)
"""How a candidate was represented: `known` = the model's item table; `text` = an unseen id whose text
was embedded by the ItemEncoder (cold start); `hashed` = an unseen id without text, scored through its
hashed id bucket alone (the id embedding learned for whatever items share that bucket)."""


class _Strict(BaseModel):
    # Unknown keys are 422s: a misspelt field must not be ignored silently.
    model_config = ConfigDict(extra="forbid")


API_KEY_HEADER = "X-API-Key"  # the header that carries the key when serve.api_key_env is set
NO_RETRY_HEADER = "X-Seqctr-No-Retry"
"""Set on the app's own 500s: the failure is deterministic, so the client does not retry it (a 500 from
Serve's proxy, e.g. when the replica holding the request died, has no such header and is retried)."""
# The bounds go before the BeforeValidator: after it, pydantic writes them into the OpenAPI schema as
# "ge"/"le" (not JSON Schema) instead of "minimum"/"maximum", and clients and fuzzers miss them.
UnixSeconds = Annotated[StrictInt, Field(ge=0, le=MAX_UNIX_SECONDS), BeforeValidator(_whole_number)]
"""Unix time in whole seconds (a millisecond value is out of range, so it is refused, not misread)."""


class HistoryClick(_Strict):
    """A clicked item with the time of the click: the model reads the click's age at the request (a click
    seconds old belongs to the current session and says most about what the user wants now)."""

    item_id: ItemId = Field(description="Item id (string or integer).")
    timestamp: UnixSeconds = Field(description="Unix seconds of the click.")


class CandidateItem(_Strict):
    """A candidate with its text, so an item the model has never seen can still be scored by content."""

    item_id: ItemId = Field(description="Item id (string or integer).")
    text: Text | None = Field(None, description="Title or description; used only when the id is unknown.")


class ScoreRequest(_Strict):
    """One user's history and the candidates to score for them."""

    user_id: Text | None = Field(
        None,
        description="Caller's user id: routes the request (serve.variants) and, for a model trained with "
        "data.features.user_id, is its user-id embedding (absent = a new user).",
    )
    history: list[ItemId | HistoryClick] = Field(
        description="Items the user clicked, oldest first: ids, or {item_id, timestamp} so the model reads "
        "each click's age (an id alone = age unknown, scores less sharp). Longer than max_seq_len = cut to "
        "the most recent."
    )
    timestamp: UnixSeconds | None = Field(
        None, description="Unix seconds of the request, for click ages (default: the server's clock)."
    )
    candidates: list[ItemId | CandidateItem] = Field(
        min_length=1, description="Item ids or {item_id, text} objects; at most serve.max_candidates."
    )
    context: dict[Annotated[str, StringConstraints(min_length=1)], ContextValue] | None = Field(
        None,
        description='Event context the model was trained with (data.features.event), e.g. {"device": '
        '"mobile", "hour": 9}; a field the model does not read is ignored, an absent one reads as missing.',
    )
    user_impressions: Count | None = Field(
        None, description="The user's impressions so far (data.features.counts; absent = a new user)."
    )
    user_clicks: Count | None = Field(None, description="The user's clicks so far (<= user_impressions).")
    user_item_counts: dict[Annotated[str, StringConstraints(min_length=1)], dict[Text, tuple[Count, Count]]] | None = (
        Field(
            None,
            description="The user's [impressions, clicks] so far per value of each item column the model counts by "
            '(data.features.user_item_counts), e.g. {"category": {"books": [12, 3]}}; an absent value = none.',
        )
    )
    recent_impressions: list[ItemId] | None = Field(
        None,
        description="The items the user was shown most recently, clicked or not, oldest first "
        "(data.features.user_item_counts; cut to the model's recent_impressions; absent = none).",
    )
    # Strict, as the schema says: `"explain": 0` or `"k": "3"` are 422s, not silently coerced.
    explain: StrictBool = Field(False, description="Return each history item's attention weight per candidate.")

    def history_timestamps(self) -> list[int | None] | None:
        """Each click's time (None where the item came as a bare id); None when no click has one."""
        stamps = [h.timestamp if isinstance(h, HistoryClick) else None for h in self.history]
        return stamps if any(s is not None for s in stamps) else None

    def candidate_items(self) -> list[CandidateItem]:
        """Every candidate as a CandidateItem (a bare id has no text)."""
        return [c if isinstance(c, CandidateItem) else CandidateItem(item_id=c) for c in self.candidates]

    def payload(self) -> dict[str, Any]:
        """The plain dict the scorer deployment takes (cheap to send through a deployment handle)."""
        items = self.candidate_items()
        side = {
            "context": self.context,
            "user_impressions": self.user_impressions,
            "user_clicks": self.user_clicks,
            "user_item_counts": self.user_item_counts,
            "recent_impressions": self.recent_impressions,
        }
        return {
            "user_id": self.user_id,
            "history": [h.item_id if isinstance(h, HistoryClick) else h for h in self.history],
            "history_timestamps": self.history_timestamps(),
            "timestamp": self.timestamp,
            "candidates": [c.item_id for c in items],
            "texts": [c.text for c in items],
            "explain": self.explain,
        } | {k: v for k, v in side.items() if v is not None}  # side fields (data.features) only when sent


class RankRequest(ScoreRequest):
    """A score request plus how many of the best candidates to return."""

    k: Integer = Field(10, ge=1, description="Number of top candidates returned (all when k exceeds them).")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="Click probability.")
    source: ItemSource = Field(description="known | text (cold start, embedded) | hashed (unseen id, no text).")
    attention: list[float] | None = Field(
        None, description="With explain and an attention model: weight of each item of `history` (sums to 1)."
    )


class ScoreResponse(BaseModel):
    model: str = Field(description="Model name (registry name, else the experiment name).")
    version: str = Field(description="Registry version, else sha256: of the checkpoint manifest.")
    scores: list[float] = Field(description="Click probabilities in candidate order.")
    items: list[ScoredItem] = Field(description="Per candidate, in candidate order.")
    history: list[str] | None = Field(
        None, description="With explain: the history the model read (after the cut), which attention indexes."
    )
    variant: str | None = Field(None, description="The serve.variants name that scored it (null: a single model).")
    request_id: str | None = Field(
        None, description="The request's X-Request-ID header, else a fresh id; shadow score logs carry it."
    )


class RankResponse(BaseModel):
    model: str
    version: str
    items: list[ScoredItem] = Field(description="The top k candidates, best first (ties keep request order).")
    history: list[str] | None = None
    variant: str | None = None
    request_id: str | None = None


class ReloadStatus(BaseModel):
    uri: str
    ok: bool
    error: str | None = None
    at: str = Field(description="UTC time of the attempt (ISO 8601).")


class VariantInfo(BaseModel):
    """One serve.variants entry as a replica holds it now."""

    name: str
    weight: float = Field(description="Served: relative traffic weight; shadow: share of requests scored.")
    shadow: bool
    model: str = Field(description="Model name (registry name, else the experiment name).")
    version: str
    uri: str
    resolved: str
    checkpoint: str
    loaded_at: str


class ModelInfo(BaseModel):
    name: str
    version: str
    uri: str = Field(description="The model URI being served (registry://NAME@ALIAS or a folder).")
    resolved: str = Field(description="What the URI named when loaded (registry://NAME@v0003, a folder).")
    checkpoint: str = Field(description="The local checkpoint folder it was loaded from.")
    loaded_at: str
    metrics: dict[str, Any]
    attention: bool = Field(description="Whether `explain` returns attention weights.")
    quantized: Literal["none", "int8"]
    config: dict[str, Any] = Field(description="Summary: model, max_seq_len, encoder and serve settings.")
    last_reload: ReloadStatus | None = Field(
        None, description="The latest hot-reload attempt; ok=false keeps the previous model serving."
    )
    batch_sizes: dict[int, int] = Field(
        default_factory=dict,
        description="Batches this replica scored since it started, by size (requests batched together).",
    )
    variants: list[VariantInfo] | None = Field(
        None, description="With serve.variants: every variant (the fields above describe the heaviest served one)."
    )
    shadows: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Shadow scorings this replica ran since it started: variant -> scored | failed | skipped -> count.",
    )
    impressions: dict[str, Any] | None = Field(
        None,
        description="With serve.impressions: this replica's log (root, buffered, written, files, dropped, errors).",
    )


class ErrorDetail(BaseModel):
    """One error, in FastAPI's 422 shape: where (`loc`, e.g. ["body", "candidates"]), what and why."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer: a list of errors naming the field, or one message."""

    detail: list[ErrorDetail] | str


def validation_error(loc: tuple[str | int, ...], msg: str, kind: str, value: Any = None) -> dict[str, Any]:
    """One error in FastAPI's 422 shape, so config-dependent checks read like pydantic's own."""
    return {"type": kind, "loc": list(loc), "msg": msg, "input": value}


def candidates_error(count: int, max_candidates: int) -> dict[str, Any] | None:
    """The 422 error for too many candidates, or None when `count` is within the limit."""
    if count <= max_candidates:
        return None
    return validation_error(
        ("body", "candidates"),
        f"at most {max_candidates} candidates per request (serve.max_candidates), got {count}",
        "too_long",
    )
