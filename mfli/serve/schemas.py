"""Request and response models of the HTTP service: what the edge accepts, and what OpenAPI shows.

Everything a request carries is checked here, before it can reach a batch: ids are JSON integers in
the int64 range (``true``, ``"12"``, ``1.0`` and ``2**63`` are 422s naming the field), lists and maps
are bounded by :class:`~mfli.serve.limits.ServiceLimits`, quota weights are finite and bounded.
A request that passes can still be refused by the snapshot (unknown facet, ...), but only for itself.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mfli.serve.limits import INT64_MAX, INT64_MIN, ServiceLimits


def _int64(value: Any) -> int:
    # JSON integers only: pydantic's lax int would take True, "12" and 12.0 as ids
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int64_type", "must be an integer id, got {got}", {"got": _short(value)})
    if not INT64_MIN <= value <= INT64_MAX:
        raise PydanticCustomError("int64_range", "id must fit in 64-bit integers [-2^63, 2^63-1], got {got}",
                                  {"got": _short(value)})
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: An id: a JSON integer in the int64 range.
Int64 = Annotated[int, PlainValidator(_int64),
                  WithJsonSchema({"type": "integer", "format": "int64"})]  # int64 is the range


def _weight(limit: float):
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PydanticCustomError("weight_type", "must be a number, got {got}", {"got": _short(value)})
        if not math.isfinite(value) or not 0 <= value <= limit:
            raise PydanticCustomError("weight_range", "must be a finite number in [0, {limit}], got {got}",
                                      {"limit": f"{limit:g}", "got": _short(value)})
        return float(value)

    return Annotated[float, PlainValidator(check),
                     WithJsonSchema({"type": "number", "minimum": 0, "maximum": limit})]


def _feature_value(max_chars: int):
    def check(value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return _int64(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise PydanticCustomError("feature_value", "must be a finite number, got {got}", {"got": value})
            return value
        if isinstance(value, str):
            if len(value) > max_chars:
                raise PydanticCustomError("feature_value", "string longer than {n} characters", {"n": max_chars})
            return value
        raise PydanticCustomError("feature_value", "must be a string, number or null, got {got}",
                                  {"got": type(value).__name__})

    return Annotated[Any, PlainValidator(check),
                     WithJsonSchema({"anyOf": [{"type": "string", "maxLength": max_chars}, {"type": "number"},
                                               {"type": "null"}]})]


def request_models(limits: ServiceLimits) -> tuple[type[BaseModel], type[BaseModel]]:
    """``(RetrieveBody, UserFeatures)`` with ``limits`` built in (so OpenAPI shows the real bounds)."""
    Name = Annotated[str, Field(min_length=1, max_length=limits.max_string_chars)]
    Attr = Annotated[str, Field(max_length=limits.max_string_chars)]
    value_adapter = TypeAdapter(_feature_value(limits.max_string_chars))

    def check_extras(model: BaseModel) -> BaseModel:
        # any key beyond the two named ones is a model user column: bounded in count, name and value
        extra = model.__pydantic_extra__ or {}
        if len(extra) + 2 > limits.max_feature_fields:
            raise PydanticCustomError("too_many_fields", "at most {n} feature fields", {"n": limits.max_feature_fields})
        for key, v in extra.items():
            if len(key) > limits.max_string_chars:
                raise PydanticCustomError("feature_key", "feature name longer than {n} characters",
                                          {"n": limits.max_string_chars})
            try:
                value_adapter.validate_python(v)
            except ValidationError as exc:
                raise PydanticCustomError("feature_value", "{key}: {msg}",
                                          {"key": key, "msg": exc.errors()[0]["msg"]}) from None
        return model

    user_features = create_model(
        "UserFeatures",
        __config__=ConfigDict(extra="allow", strict=True),
        __doc__="Raw user features; any other key is a model user column (string, number or null).",
        __validators__={"_extras": model_validator(mode="after")(check_extras)},
        history_item_ids=(list[Int64] | None, Field(None, max_length=limits.max_history_items,
                                                    description="item ids the user engaged with, oldest first")),
        user_attrs=(list[Attr] | None, Field(None, max_length=limits.max_user_attrs,
                                             description="'column=value' strings")),
    )
    Weight = _weight(limits.max_quota_weight)
    body = create_model(
        "RetrieveBody",
        __config__=ConfigDict(extra="forbid"),
        __doc__="``POST /retrieve`` body. Unknown fields are refused (a misspelt field is a 422, not a default).",
        user_id=(Int64 | None, Field(None, description="user id; its features come from the online store")),
        recent_items=(list[Int64], Field(default_factory=list, max_length=limits.max_recent_items,
                                         description="recent item ids, oldest first: the triggers; never returned")),
        user_features=(user_features | None, Field(None, description="raw user features; skips the lookup")),
        k=(int, Field(100, ge=1, le=limits.max_k, strict=True, description="results wanted")),
        facet_quotas=(dict[Name, Weight] | None, Field(
            None, max_length=limits.max_facet_quotas,
            description="{facet: weight >= 0}: share of the k slots per facet; facets not named get none")),
        mode=(Literal["auto", "trigger", "user", "blend"], Field(
            "auto", description="auto: blend where the snapshot serves it, else trigger when a recent item "
                                "is known, else user")),
    )
    return body, user_features


# ------------------------------------------------------------------------------------------------
# responses
# ------------------------------------------------------------------------------------------------
class Item(BaseModel):
    """One retrieved item."""

    item_id: int
    score: float
    facet: str
    cluster: int
    trigger: int | None = Field(None, description="trigger mode: the recent item that led here")
    path_rank: int | None = Field(None, description="user mode: rank of the beam path that led here")
    sources: list[Literal["user", "coengagement", "trigger", "trending"]] | None = Field(
        None, description="blend mode: the lists that held the item")


class RetrieveResponse(BaseModel):
    snapshot_id: str
    mode: Literal["trigger", "user", "blend"]
    items: list[Item]


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: the request is wrong; each entry names the field at fault."""

    detail: list[ErrorDetail]


class ErrorResponse(BaseModel):
    """4xx/5xx other than 422: what went wrong, in words."""

    detail: str


class LiveResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    snapshot_id: str | None
    last_refresh_error: str | None


class MetadataResponse(BaseModel):
    """Snapshot and service metadata (extra keys: store, manifest, metrics ...)."""

    model_config = ConfigDict(extra="allow")

    snapshot_id: str | None
    created_at: str | None = None
    deltas_applied: list[str] = []
    n_items: int | None = None
    facets: list[str] = []
    index: dict[str, Any] = {}
    service: dict[str, Any] = {}
