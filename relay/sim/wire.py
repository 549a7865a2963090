"""The simulator's wire formats: every JSON body it sends is one of these pydantic models.

These are the strict, outbound shapes MindVideo answers with (the relay's own liberal inbound
reading of them is ``relay.models.TaskSnapshot``). Errors travel as ``ApiError`` until the
middleware turns them into ``{"error": {"code", "message", "details"?}}``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel

from relay.models import format_ts


def iso_ts(moment_s: float) -> str:
    """A clock reading (unix seconds) as RFC 3339 UTC with milliseconds and ``Z``."""
    return format_ts(datetime.fromtimestamp(moment_s, UTC))


class ErrorDetail(BaseModel):
    """One refused field of a request, as a dotted path (``input.n``)."""

    field: str
    message: str


class ErrorInfo(BaseModel):
    """``code`` is stable for programs, ``message`` is for people; ``details`` only on 422."""

    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorBody(BaseModel):
    """Every non-2xx answer of the simulator has this body."""

    error: ErrorInfo


class OutputImage(BaseModel):
    """One generated image, as an absolute URL the client downloads."""

    url: str


class TaskOutput(BaseModel):
    """``output`` of a succeeded task: its ``n`` images."""

    images: list[OutputImage]


class TaskError(BaseModel):
    """``error`` of a failed task."""

    code: str
    message: str


class SubmitResponse(BaseModel):
    """Body of a successful ``POST /api/v1/tasks`` (and of an idempotent replay)."""

    request_id: str
    task_id: str
    model: str
    status: str
    cost_estimate: float
    created_at: str


class TaskSnapshotBody(BaseModel):
    """Body of ``GET /api/v1/tasks/{id}``, of a cancel, and ``data:`` of each stream event."""

    request_id: str
    task_id: str
    model: str
    status: str
    cost_estimate: float
    cost_actual: float | None
    output: TaskOutput | None
    error: TaskError | None
    created_at: str
    updated_at: str


class ChargeBody(BaseModel):
    """One line of ``GET /_sim/ledger``: a charge and the current state of its task."""

    idempotency_key: str | None
    task_id: str
    request_id: str
    model: str
    amount_usd: float
    created_at: str
    status: str
    cost_actual: float | None


class LedgerBody(BaseModel):
    """Body of ``GET /_sim/ledger``: the charges and their exact totals in USD."""

    charges: list[ChargeBody]
    count: int
    total_estimate_usd: float
    total_actual_usd: float


def json_body(
    body: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Serialize a wire model as a JSON response (``None`` fields are kept: they are contract)."""
    return web.json_response(body.model_dump(mode="json"), status=status, headers=headers)


class ApiError(Exception):
    """An error answer the simulator gives on purpose; the middleware renders it as JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def to_response(self) -> web.Response:
        body = ErrorBody(
            error=ErrorInfo(code=self.code, message=self.message, details=self.details)
        )
        payload = body.model_dump(mode="json", exclude_none=True)
        return web.json_response(payload, status=self.status, headers=self.headers)
