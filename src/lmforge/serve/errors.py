"""The errors of the HTTP API, in OpenAI's error-body shape:
{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request that fails with `status`; `param` names the field at fault, where one is."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


def unknown_model(name: str, served: str) -> ApiError:
    return ApiError(404, f"the model {name!r} does not exist: this server serves {served!r}",
                    param="model", code="model_not_found")


def queue_full() -> ApiError:
    return ApiError(429, "the server's queue is full; retry later",
                    type="rate_limit_error", code="queue_full")


def draining() -> ApiError:
    return ApiError(503, "the server is shutting down and takes no new requests",
                    type="server_error", code="draining")


def unauthorized() -> ApiError:
    return ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                    type="authentication_error", code="invalid_api_key")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the server's limit of {limit:,} bytes",
                    code="request_too_large")
