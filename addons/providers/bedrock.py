"""Amazon Bedrock (InvokeModel API) as an upstream for Anthropic `/v1/messages` clients.

Pure request rewriting, SigV4 signing and error translation, plus
`BedrockCredentials`, which resolves AWS credentials on a background thread
so the proxy's event loop never blocks on STS/SSO/IMDS.

Rewrite rules follow coder/aibridge (`intercept/messages/base.go`,
`reqpayload.go`) and the Bedrock Anthropic request docs:
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages-request-response.html
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

log = logging.getLogger(__name__)

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
SIGNING_NAME = "bedrock"  # the SigV4 service name; not "bedrock-runtime"

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
# SigV4

# Never signed: they change hop by hop, or they are the signature's own output.
_UNSIGNABLE_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "authorization",
        "x-api-key",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
    }
)
_SIGNATURE_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256")


def sign(
    url: str, body: bytes, headers: Mapping[str, str], credentials: ReadOnlyCredentials, region: str
) -> dict[str, str]:
    """SigV4-sign a POST of exactly `body` to `url` (signing name "bedrock").

    `headers` are the headers that will be sent unchanged (e.g. content-type,
    accept); hop-by-hop, host and old auth headers are ignored. The host is
    taken from `url`, so the request's Host header must match it. Returns the
    headers to set: Authorization, X-Amz-Date, and X-Amz-Security-Token when
    the credentials carry a session token.
    """
    signable = {k: v for k, v in headers.items() if k.lower() not in _UNSIGNABLE_HEADERS}
    request = AWSRequest(method="POST", url=url, data=body, headers=signable)
    SigV4Auth(credentials, SIGNING_NAME, region).add_auth(request)
    return {name: request.headers[name] for name in _SIGNATURE_HEADERS if name in request.headers}


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
# Credentials

CredentialSource = Callable[[], Credentials | None]


def default_chain(profile: str | None = None) -> CredentialSource:
    """boto3's default chain: env, shared credentials/config (profiles, SSO, assume-role),
    container and instance roles. Call it only off the event loop: it may do network I/O."""

    def resolve() -> Credentials | None:
        import boto3  # deferred: creating a session reads config files

        return boto3.Session(profile_name=profile).get_credentials()

    return resolve


class BedrockCredentials:
    """AWS credentials for signing, resolved and refreshed on a daemon thread.

    Static keys (`access_key` + `secret_key`, optional `session_token`) are used
    as they are. Otherwise `source` (default: boto3's default chain for
    `profile`) is called on the background thread, which then keeps
    refreshable credentials fresh: it wakes every `poll_interval` seconds and
    no later than `refresh_margin` seconds before expiry, and calls botocore's
    `get_frozen_credentials()`. That refreshes RefreshableCredentials inside
    botocore's windows (advisory: 15 min left, mandatory: 10 min), so with the
    default 5-minute margin a refresh is always due by the time it wakes.
    Failed resolution or refresh is retried with backoff up to `poll_interval`;
    still-valid credentials stay in use meanwhile, expired ones never are.
    """

    def __init__(
        self,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        source: CredentialSource | None = None,
        refresh_margin: float = 300.0,
        poll_interval: float = 60.0,
        retry_initial: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if bool(access_key) != bool(secret_key):
            raise ValueError("bedrock: access key and secret key must be given together")
        self._static = (
            ReadOnlyCredentials(access_key, secret_key, session_token or None) if access_key and secret_key else None
        )
        self._source = source or default_chain(profile)
        self._refresh_margin = refresh_margin
        self._poll_interval = poll_interval
        self._retry_initial = retry_initial
        self._clock = clock  # injectable so tests can move time; must agree with the source's clock
        self._secrets = [s for s in (secret_key, session_token) if s]
        # (credentials, expiry epoch or None, error): replaced as one tuple so a
        # reader on another thread always sees a consistent triple.
        self._state: tuple[ReadOnlyCredentials | None, float | None, str | None] = (
            None,
            None,
            "credentials not resolved yet",
        )
        self._cond = threading.Condition()
        self._attempted = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public, non-blocking -------------------------------------------------

    def current(self) -> ReadOnlyCredentials | None:
        """The credentials to sign with now, or None (not resolved, failed, or expired)."""
        creds, expiry, _ = self._state
        if creds is not None and expiry is not None and self._clock() >= expiry:
            return None
        return creds

    @property
    def error(self) -> str | None:
        """Why `current()` is None (never contains a secret); None when credentials are usable."""
        creds, expiry, error = self._state
        if creds is not None and expiry is not None and self._clock() >= expiry:
            return error or "credentials expired and were not refreshed"
        return None if creds is not None else error

    @property
    def expiry(self) -> float | None:
        """Epoch seconds when the current credentials expire; None if they do not."""
        return self._state[1]

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if self._static is not None:
            self._publish(self._static, None, None)
            return
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bedrock-credentials", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first resolution attempt finished; True when credentials are usable.

        For startup (fail fast on missing credentials) and tests; never call it on the event loop.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.current() is None and not self._attempted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return self.current() is not None

    # -- background thread ------------------------------------------------------

    def _run(self) -> None:
        source_creds: Credentials | None = None
        backoff = self._retry_initial
        while not self._stop.is_set():
            try:
                if source_creds is None:
                    source_creds = self._source()
                    if source_creds is None:
                        raise LookupError(
                            "no AWS credentials found (env, shared credentials/config files, SSO, "
                            "container or instance role)"
                        )
                frozen = source_creds.get_frozen_credentials()  # refreshes if due
                expiry = _expiry_epoch(source_creds)
                self._publish(frozen, expiry, None)
                backoff = self._retry_initial
                delay = self._next_check(expiry)
                if delay is None:
                    return  # non-expiring credentials: nothing left to do
            except Exception as exc:  # any provider failure: keep the loop alive
                self._record_failure(exc)
                delay, backoff = backoff, min(backoff * 2, self._poll_interval)
            self._stop.wait(delay)

    def _next_check(self, expiry: float | None) -> float | None:
        if expiry is None:
            return None
        until_margin = expiry - self._refresh_margin - self._clock()
        return max(0.5, min(self._poll_interval, until_margin))

    def _record_failure(self, exc: Exception) -> None:
        message = self._scrub(f"{type(exc).__name__}: {exc}")[:500]
        creds, expiry, _ = self._state
        log.warning("bedrock credentials: %s", message)
        # Keep still-valid credentials (an advisory refresh may fail transiently).
        self._publish(creds, expiry, message)

    def _publish(self, creds: ReadOnlyCredentials | None, expiry: float | None, error: str | None) -> None:
        if creds is not None:
            self._secrets.extend(s for s in (creds.secret_key, creds.token) if s and s not in self._secrets)
            del self._secrets[:-8]  # remember the latest few only
        with self._cond:
            self._state = (creds, expiry, error)
            self._attempted = True
            self._cond.notify_all()

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _expiry_epoch(creds: Credentials) -> float | None:
    # botocore has no public getter; RefreshableCredentials keeps it here
    # (tz-aware datetime), plain Credentials have none.
    expiry = getattr(creds, "_expiry_time", None)
    return expiry.timestamp() if expiry is not None else None
