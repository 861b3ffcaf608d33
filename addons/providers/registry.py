"""The provider types aigw knows, by name."""

from __future__ import annotations

from addons.providers.base import Api, Provider, anthropic_error, aws_error, openai_error, rule

ANTHROPIC = Provider(
    type="anthropic",
    gateway_prefix="",
    rules=(
        rule(r"/v1/messages", Api.MESSAGES, "/v1/messages", ("POST",)),
        # Pass-through routes carry the organisation's key: each allows only the methods clients use
        # (README "Security"); any other method is 404 `route not supported`, never forwarded.
        rule(r"/v1/messages/count_tokens", None, "/v1/messages/count_tokens", ("POST",)),
        rule(r"/v1/models(/.*)?", None, "/v1/models", ("GET",)),
        rule(r"/api/event_logging/.*", None, "/api/event_logging", ("POST",)),
    ),
)

OPENAI = Provider(
    type="openai",
    gateway_prefix="/v1",
    rules=(
        rule(r"/chat/completions", Api.CHAT, "/chat/completions", ("POST",)),
        rule(r"/responses", Api.RESPONSES, "/responses", ("POST",)),
        rule(r"/models(/.*)?", None, "/models", ("GET",)),  # not DELETE: it deletes a fine-tuned model
        # Retrieve, input items, cancel, compact, input token counts; no DELETE of stored responses.
        rule(r"/responses/.+", None, "/responses/*", ("GET", "POST")),
        rule(r"/conversations(/.*)?", None, "/conversations", ("GET", "POST")),
    ),
)

COPILOT = Provider(
    type="copilot",
    gateway_prefix="",
    rules=(
        rule(r"/chat/completions", Api.CHAT, "/chat/completions", ("POST",)),
        rule(r"/responses", Api.RESPONSES, "/responses", ("POST",)),
        rule(r"/v1/messages", Api.MESSAGES, "/v1/messages", ("POST",)),
    ),
    passthrough_everything=True,
)

PROVIDERS: dict[str, Provider] = {p.type: p for p in (ANTHROPIC, OPENAI, COPILOT)}

# Bedrock-native clients (boto3, AnthropicBedrock, Claude Code on Bedrock) reach
# bedrock-runtime.*.amazonaws.com through the proxy only; not a configurable type.
_MODEL = r"/model/[^/]+/"
BEDROCK = Provider(
    type="bedrock",
    gateway_prefix="",
    rules=(
        rule(_MODEL + "invoke", Api.BEDROCK, "/model/{id}/invoke", ("POST",)),
        rule(_MODEL + "invoke-with-response-stream", Api.BEDROCK, "/model/{id}/invoke-with-response-stream",
             ("POST",)),
        rule(_MODEL + "converse", Api.BEDROCK, "/model/{id}/converse", ("POST",)),
        rule(_MODEL + "converse-stream", Api.BEDROCK, "/model/{id}/converse-stream", ("POST",)),
    ),
    passthrough_everything=True,  # count-tokens, async invoke, guardrails, ...: relayed, not recorded
)


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
