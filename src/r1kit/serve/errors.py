"""API errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""
from __future__ import annotations

from fastapi.responses import JSONResponse

from r1kit.serve.schemas import ErrorDetail, ErrorResponse


class APIError(Exception):
    """An error answered as `{"error": {...}}` with an HTTP status (and optional extra headers)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param,
                                               code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=self.headers)


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return APIError(status, message, type, param, code, headers).response()
