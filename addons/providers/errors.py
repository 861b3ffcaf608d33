"""Errors the gateway answers itself, in the shape the client's SDK parses.

One place for the error bodies of each API (Anthropic, OpenAI, AWS, and one
both SDK families read when no provider is known yet) and for the JSON
response that carries them. `error_type` always uses Anthropic's vocabulary;
`error_body` maps it for OpenAI and AWS clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from mitmproxy import http
from mitmproxy.net.http import status_codes

from addons.providers.base import Api


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the gateway answers itself instead of sending it on: the client gets `message` in its
    API's error shape (`error_body`), with `status` and `headers` (e.g. Retry-After)."""

    status: int
    message: str  # never contains a secret
    error_type: str = "api_error"  # Anthropic's vocabulary (mapped per API by `error_body`)
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # what refused it, as a metric label (governance's limit_rejections_total)


def anthropic_error(message: str, error_type: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def openai_error(message: str, error_type: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})


def aws_error(message: str, aws_type: str) -> bytes:
    """AWS's JSON error shape (Bedrock-native clients); botocore reads the exception name from `__type`."""
    return orjson.dumps({"__type": aws_type, "message": message})


def any_error(message: str, error_type: str, code: str | None = None) -> bytes:
    """An error both SDK families parse, for when no provider is known yet."""
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message, "code": code}})


def error_body(provider_type: str | None, api: Api | None, message: str, error_type: str) -> bytes:
    """An error in the shape the client's SDK expects.

    The API decides, not the instance type: Copilot's /v1/messages speaks
    Anthropic. `error_type` uses Anthropic's vocabulary and is mapped for OpenAI.
    """
    if api is Api.MESSAGES or (api is None and provider_type == "anthropic"):
        return anthropic_error(message, error_type)
    if api is Api.BEDROCK or provider_type == "bedrock":
        return aws_error(message, AWS_ERROR_TYPES.get(error_type, "InternalServerException"))
    return openai_error(message, OPENAI_ERROR_TYPES.get(error_type, "server_error"), error_type)


AWS_ERROR_TYPES = {
    "invalid_request_error": "ValidationException",
    "request_too_large": "ValidationException",
    "authentication_error": "UnrecognizedClientException",
    "permission_error": "AccessDeniedException",
    "not_found_error": "ResourceNotFoundException",
    "rate_limit_error": "ThrottlingException",
    "overloaded_error": "ServiceUnavailableException",
    "timeout_error": "ModelTimeoutException",
    "api_error": "InternalServerException",
}

OPENAI_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "invalid_request_error",
    "permission_error": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_exceeded",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
}


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> http.Response:
    """A response the gateway answers itself (errors, health checks, the admin API)."""
    return http.Response.make(status, body, {"content-type": "application/json", **(headers or {})})


def replace_with_json(response: http.Response, status: int, body: bytes) -> None:
    """Reshape an upstream's buffered answer in place; its other headers (Retry-After, request ids) stay."""
    response.status_code = status
    response.reason = status_codes.RESPONSES.get(status, "")
    response.headers.pop("content-encoding", None)
    response.headers["content-type"] = "application/json"
    response.content = body
