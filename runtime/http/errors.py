"""OpenAI-shaped error bodies, `{"error": {"message", "type", "param", "code"}}`, and their HTTP statuses."""

from __future__ import annotations

from typing import Any

from protocol.errors import (
    ConfigError,
    OverloadedError,
    RequestError,
    RequestTimeoutError,
    TandemError,
    WorkerDeadError,
)


class ApiError(Exception):
    """An error to answer with `status` and an OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_field(param: str, message: str) -> ApiError:
    """400 naming the offending field."""
    return ApiError(400, message, "invalid_request_error", param, "invalid_value")


def from_tandem(err: TandemError, names: dict[str, str] | None = None) -> ApiError:
    """The HTTP meaning of an error from the coordinator or the client library; `names` maps the `Generate`
    field a RequestError names to the field the user sent (`max_new_tokens` -> `max_tokens`)."""
    if isinstance(err, RequestError):
        param = (names or {}).get(err.param, err.param) if err.param else None
        return ApiError(400, str(err), "invalid_request_error", param, "bad_request")
    if isinstance(err, ConfigError):  # here: no chat template configured
        return ApiError(400, str(err), "invalid_request_error", None, "bad_request")
    if isinstance(err, OverloadedError):
        return ApiError(429, str(err), "rate_limit_error", None, "overloaded")
    if isinstance(err, RequestTimeoutError):
        return ApiError(504, str(err), "timeout_error", None, "timeout")
    if isinstance(err, WorkerDeadError):
        return ApiError(503, str(err), "service_unavailable", None, "coordinator_unavailable")
    return ApiError(500, str(err), "internal_error", None, "internal")


def no_verifier() -> ApiError:
    return ApiError(503, "no verifier has joined the deployment yet", "service_unavailable", None, "no_workers")
