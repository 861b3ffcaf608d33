"""Amazon Bedrock: the runtime routes Bedrock-native clients use, and what the gateway must know to
speak InvokeModel for Anthropic clients, as pure protocol.

Anthropic Messages -> InvokeModel request rewriting (model choice, thinking,
beta flags, unsupported fields), endpoint/region/path parsing, AWS error ->
Anthropic error translation and the token-count headers. No I/O: signing and
credentials are the upstream's (`addons/upstreams/aws.py`).

Rewrite rules follow coder/aibridge (`intercept/messages/base.go`,
`reqpayload.go`) and the Bedrock Anthropic request docs:
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages-request-response.html
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson

from addons.providers.base import Api, Provider, rule

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
EVENTSTREAM = "application/vnd.amazon.eventstream"  # content type of AWS event streams

# Anthropic-Beta flags Bedrock accepts; any other flag is a 400 "invalid beta
# flag". Same list as coder/aibridge's `bedrockSupportedBetaFlags` (from the
# AWS page cited in the module docstring).
BEDROCK_BETA_ALLOWLIST: frozenset[str] = frozenset(
    {
        "computer-use-2025-01-24",  # Claude 3.7 Sonnet
        "token-efficient-tools-2025-02-19",  # Claude 3.7 Sonnet, Claude 4+
        "interleaved-thinking-2025-05-14",  # Claude 4+
        "output-128k-2025-02-19",  # Claude 3.7 Sonnet
        "dev-full-thinking-2025-05-14",  # Claude 4+ (needs account-team access)
        "context-1m-2025-08-07",  # Claude Sonnet 4
        "context-management-2025-06-27",  # Sonnet 4.5 / Haiku 4.5 only (gated below)
        "effort-2025-11-24",  # Opus 4.5 only (gated below)
        "tool-search-tool-2025-10-19",  # Opus 4.5
        "tool-examples-2025-10-29",  # Opus 4.5
    }
)
EFFORT_BETA = "effort-2025-11-24"
CONTEXT_MANAGEMENT_BETA = "context-management-2025-06-27"

# Top-level Messages fields absent from Bedrock's body schema (400 "Extra
# inputs are not permitted"). `model`/`stream` move into the URL.
BEDROCK_UNSUPPORTED_FIELDS: tuple[str, ...] = ("metadata", "service_tier", "container", "inference_geo")
# Fields kept only when the beta flag that enables them survived filtering.
BEDROCK_BETA_GATED_FIELDS: Mapping[str, str] = {
    "output_config": EFFORT_BETA,
    "context_management": CONTEXT_MANAGEMENT_BETA,
}

# Adaptive thinking -> enabled+budget: fraction of max_tokens per
# output_config.effort (aibridge's heuristic, adapted from OpenRouter).
_EFFORT_RATIOS: Mapping[str, float] = {"low": 0.2, "medium": 0.5, "high": 0.8, "max": 0.95}
_DEFAULT_EFFORT_RATIO = 0.8  # "high", the API default
_MIN_THINKING_BUDGET = 1024


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


@dataclass(frozen=True, slots=True)
class BedrockRequest:
    url: str
    body: bytes
    model_id: str
    stream: bool


# ---------------------------------------------------------------------------
# Model ids


@dataclass(frozen=True, slots=True)
class ClaudeVersion:
    family: str  # opus | sonnet | haiku
    major: int
    minor: int

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)


# New ids: claude-opus-4-5-20251101, claude-sonnet-4-20250514 (minor 0: the
# date is not a minor). Old ids: claude-3-7-sonnet-20250219, claude-3-haiku-...
_NEW_ID = re.compile(r"claude-(opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?![0-9])")
_OLD_ID = re.compile(r"claude-(\d+)(?:-(\d{1,2}))?-(opus|sonnet|haiku)")


def claude_version(model_id: str) -> ClaudeVersion | None:
    """Family and version of a Bedrock Claude model id, inference profile or ARN.

    None when the id names no Claude model (e.g. an application inference
    profile ARN): callers then take the conservative path.
    """
    m = _NEW_ID.search(model_id)
    if m:
        return ClaudeVersion(m.group(1), int(m.group(2)), int(m.group(3) or 0))
    m = _OLD_ID.search(model_id)
    if m:
        return ClaudeVersion(m.group(3), int(m.group(1)), int(m.group(2) or 0))
    return None


def supports_adaptive_thinking(model_id: str) -> bool:
    """Claude 4.6+ accepts `thinking: {type: adaptive}` on Bedrock (aibridge: Opus/Sonnet 4.6, Opus 4.7+)."""
    v = claude_version(model_id)
    return v is not None and v.at_least(4, 6)


def requires_adaptive_thinking(model_id: str) -> bool:
    """Opus 4.7+ rejects the legacy `enabled`+`budget_tokens` shape with a 400 (AWS model card)."""
    v = claude_version(model_id)
    return v is not None and v.family == "opus" and v.at_least(4, 7)


def _beta_allowed_for_model(flag: str, v: ClaudeVersion | None) -> bool:
    # Per-model gating (aibridge `filterBedrockBetaFlags`).
    if flag == EFFORT_BETA:
        return v is not None and v.family == "opus" and (v.major, v.minor) == (4, 5)
    if flag == CONTEXT_MANAGEMENT_BETA:
        return v is not None and v.family in ("sonnet", "haiku") and (v.major, v.minor) == (4, 5)
    return True


def filter_betas(values: Iterable[str], model_id: str) -> list[str]:
    """Header values (comma lists, possibly repeated) -> the flags Bedrock accepts for this model."""
    v = claude_version(model_id)
    kept: list[str] = []
    for value in values:
        for flag in (f.strip() for f in value.split(",")):
            if flag in BEDROCK_BETA_ALLOWLIST and flag not in kept and _beta_allowed_for_model(flag, v):
                kept.append(flag)
    return kept


# ---------------------------------------------------------------------------
# Request rewrite


def build_invoke_request(
    body: dict, anthropic_beta: list[str], *, endpoint: str, model: str, small_fast_model: str
) -> BedrockRequest:
    """Rewrite an Anthropic Messages request body for Bedrock InvokeModel(WithResponseStream).

    - model: requested names containing "haiku" go to `small_fast_model`
      (falls back to `model` when empty), everything else to `model`;
    - URL: `{endpoint}/model/{quote(model_id, safe=":")}/invoke` or
      `/invoke-with-response-stream` when `body["stream"]` is true;
    - thinking: see `_convert_thinking`; betas: `filter_betas` (also applied to
      an `anthropic_beta` list already in the body), moved into the body;
    - fields: drops `model`, `stream`, `BEDROCK_UNSUPPORTED_FIELDS`, and the
      beta-gated fields whose beta did not survive; sets `anthropic_version`.
    The input dict is not modified.
    """
    if not model:
        raise ValueError("bedrock: model is required")
    requested = str(body.get("model") or "")
    model_id = (small_fast_model or model) if "haiku" in requested.lower() else model
    stream = body.get("stream") is True

    out = dict(body)
    _convert_thinking(out, model_id)
    existing = out.pop("anthropic_beta", None)
    header_values = list(anthropic_beta) + (list(existing) if isinstance(existing, list) else [])
    betas = filter_betas([str(v) for v in header_values], model_id)
    _strip_fields(out, betas, model_id)
    out["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
    if betas:
        out["anthropic_beta"] = betas

    action = "invoke-with-response-stream" if stream else "invoke"
    url = f"{endpoint.rstrip('/')}/model/{quote(model_id, safe=':')}/{action}"
    return BedrockRequest(url=url, body=orjson.dumps(out), model_id=model_id, stream=stream)


def _convert_thinking(body: dict, model_id: str) -> None:
    """Make `thinking` a shape the target model accepts.

    - Opus 4.7+ accepts only adaptive: `enabled` becomes `{type: adaptive}`
      (no effort is invented from the budget; an explicit output_config.effort stays).
    - Claude 4.6+ accepts both: unchanged.
    - Older (or unrecognisable) ids: `adaptive` becomes `enabled` with
      budget_tokens = max_tokens * ratio(output_config.effort; low .2, medium .5,
      high/absent .8, max .95); a budget under 1024 disables thinking instead of
      starving the answer. Without a positive max_tokens it is left for Bedrock to reject.
    """
    thinking = body.get("thinking")
    if not isinstance(thinking, dict):
        return
    kind = thinking.get("type")
    if requires_adaptive_thinking(model_id):
        if kind == "enabled":
            body["thinking"] = {"type": "adaptive"}
        return
    if kind != "adaptive" or supports_adaptive_thinking(model_id):
        return
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        return
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    budget = int(max_tokens * _EFFORT_RATIOS.get(str(effort), _DEFAULT_EFFORT_RATIO))
    if budget < _MIN_THINKING_BUDGET:
        body["thinking"] = {"type": "disabled"}
    else:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _strip_fields(body: dict, betas: list[str], model_id: str) -> None:
    for name in ("model", "stream", *BEDROCK_UNSUPPORTED_FIELDS):
        body.pop(name, None)
    adaptive_only = requires_adaptive_thinking(model_id)
    for name, flag in BEDROCK_BETA_GATED_FIELDS.items():
        # Opus 4.7+ takes output_config natively, without the effort beta.
        if flag not in betas and not (adaptive_only and name == "output_config"):
            body.pop(name, None)
    config = body.get("output_config")
    if adaptive_only and isinstance(config, dict) and "format" in config:
        # Accepted parent, rejected sub-field (structured outputs) on Bedrock.
        body["output_config"] = {k: v for k, v in config.items() if k != "format"}


# ---------------------------------------------------------------------------
# Endpoint, path and region

_REGION_HOST = re.compile(r"(?:^|\.)bedrock-runtime(?:-fips)?\.([a-z]{2}(?:-[a-z]+)+-\d+)\.")
_MODEL_PATH = re.compile(
    r".*/model/(?P<model>[^/]+)/(?P<op>invoke|invoke-with-response-stream|converse|converse-stream|count-tokens)"
)


def endpoint_for_region(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


def region_from_endpoint(endpoint: str) -> str | None:
    """`us-west-2` from https://bedrock-runtime.us-west-2.amazonaws.com (also -fips, .cn, VPC endpoints)."""
    host = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}").hostname or ""
    m = _REGION_HOST.search(host)
    return m.group(1) if m else None


def resolve_region(endpoint: str | None, region: str | None) -> str:
    """The signing region: explicit `region`, else parsed from `endpoint`; ValueError if neither."""
    if region:
        return region
    found = region_from_endpoint(endpoint) if endpoint else None
    if not found:
        raise ValueError(
            "bedrock: region is required (cannot infer it from base URL "
            f"{endpoint!r}; expected bedrock-runtime.<region>.amazonaws.com)"
        )
    return found


def parse_model_path(path: str) -> tuple[str, str] | None:
    """`/model/{id}/{operation}` (any prefix and query ignored) -> (unquoted model id, operation)."""
    m = _MODEL_PATH.fullmatch(path.split("?", 1)[0])
    return (unquote(m.group("model")), m.group("op")) if m else None


# ---------------------------------------------------------------------------
# Errors

_ERROR_TYPES_BY_AWS: Mapping[str, tuple[str, int | None]] = {
    # aws error type -> (anthropic type, status override)
    "validationexception": ("invalid_request_error", None),
    "serializationexception": ("invalid_request_error", 400),
    "accessdeniedexception": ("permission_error", 403),
    "unrecognizedclientexception": ("permission_error", 403),
    "invalidsignatureexception": ("permission_error", 403),
    "expiredtokenexception": ("permission_error", 403),
    "incompletesignatureexception": ("permission_error", 403),
    "missingauthenticationtokenexception": ("permission_error", 403),
    "resourcenotfoundexception": ("not_found_error", 404),
    "throttlingexception": ("rate_limit_error", 429),
    "servicequotaexceededexception": ("rate_limit_error", 429),
    "modelnotreadyexception": ("overloaded_error", None),
    "serviceunavailableexception": ("overloaded_error", 503),
    "modeltimeoutexception": ("timeout_error", None),
    "internalserverexception": ("api_error", None),
    "modelerrorexception": ("api_error", None),
    "modelstreamerrorexception": ("api_error", None),
}
_UNKNOWN_MODEL = re.compile(r"model identifier is invalid|model .*(?:not found|does not exist)", re.I)


def translate_error(status: int, body: bytes, headers: Any) -> tuple[int, dict]:
    """A Bedrock/AWS error response -> (status, Anthropic error body).

    Reads `message`/`Message` from a JSON body and the error type from the
    `x-amzn-ErrorType` header (or `__type`/`code` in the body). Unknown
    models are reported as 404 not_found_error, as Anthropic does.
    """
    parsed = _json_dict(body)
    data = parsed or {}
    message = data.get("message") or data.get("Message")
    aws_type = _header(headers, "x-amzn-errortype") or data.get("__type") or data.get("code") or ""
    aws_type = str(aws_type).split(":", 1)[0].rsplit("#", 1)[-1]
    if not message:
        # A non-JSON body (e.g. an HTML page from a load balancer) is the best message there is.
        text = body.decode("utf-8", "replace").strip() if parsed is None else ""
        message = text[:500] or aws_type or f"Bedrock returned HTTP {status}"
    error_type, new_status = _classify(status, aws_type.lower(), str(message))
    out: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": str(message)}}
    request_id = _header(headers, "x-amzn-requestid")
    if request_id:
        out["request_id"] = request_id
    return new_status, out


def _classify(status: int, aws_type: str, message: str) -> tuple[str, int]:
    if _UNKNOWN_MODEL.search(message) and status in (400, 404):
        return "not_found_error", 404
    if aws_type in _ERROR_TYPES_BY_AWS:
        error_type, override = _ERROR_TYPES_BY_AWS[aws_type]
        return error_type, override or status
    by_status = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        408: "timeout_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
    if status in by_status:
        return by_status[status], status
    return ("api_error" if status >= 500 else "invalid_request_error"), status


def _json_dict(body: bytes) -> dict | None:
    """The body as a JSON object; {} for other JSON values; None when it is not JSON."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else {}


def _header(headers: Any, name: str) -> str | None:
    """Case-insensitive lookup in a dict, mitmproxy Headers or list of pairs."""
    if headers is None:
        return None
    items = headers.items() if hasattr(headers, "items") else headers
    for key, value in items:
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key.lower() == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


# ---------------------------------------------------------------------------
# Response headers

_TOKEN_COUNT_HEADER = re.compile(r"x-amzn-bedrock-(.+)-token-count")


def token_count_headers(headers: Mapping[str, str]) -> dict[str, int]:
    """X-Amzn-Bedrock-{Input,Output,Cache-Read-Input,Cache-Write-Input}-Token-Count -> {"input": n, ...}."""
    counts: dict[str, int] = {}
    for name, value in headers.items():
        m = _TOKEN_COUNT_HEADER.fullmatch(name.lower())
        if m and value.strip().isdigit():
            counts[m.group(1).replace("-", "_")] = int(value)
    return counts
