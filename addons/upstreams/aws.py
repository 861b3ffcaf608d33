"""AWS credentials and SigV4 signing for the Bedrock upstream strategies.

`BedrockCredentials` resolves and refreshes AWS credentials on a daemon
thread, so the proxy's event loop never blocks on STS/SSO/IMDS; the loop only
ever reads the current frozen set and signs with it (`sign`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from mitmproxy import http

from addons.providers.bedrock import region_from_endpoint
from addons.providers.errors import Refusal
from addons.settings.instances import BedrockSettings

log = logging.getLogger(__name__)

SIGNING_NAME = "bedrock"  # the SigV4 service name; not "bedrock-runtime"


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



def credentials_for(settings: BedrockSettings) -> BedrockCredentials:
    """Static keys when configured, else boto3's default chain (resolved on a thread)."""
    if settings.access_key and settings.access_key_secret:
        return BedrockCredentials(access_key=settings.access_key, secret_key=settings.access_key_secret)
    return BedrockCredentials()


def signing_region(settings: BedrockSettings) -> str | None:
    # A custom base URL (VPC endpoint, proxy, test fake) may not name the region;
    # AWS_REGION / AWS_DEFAULT_REGION are what the AWS SDKs fall back to.
    return (settings.region or region_from_endpoint(settings.endpoint)
            or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


def signing_problem(name: str, region: str | None, credentials: BedrockCredentials) -> Refusal | None:
    """Why the gateway cannot sign for instance `name` right now (never naming a secret), or None."""
    if region is None:
        return Refusal(502, f"instance {name!r} has no AWS region to sign Bedrock requests for; "
                       "set its BEDROCK_REGION", "api_error")
    if credentials.current() is None:
        return Refusal(502, f"AWS credentials for Amazon Bedrock (instance {name!r}) are unavailable: "
                       f"{credentials.error}", "api_error")
    return None


_SIGV4_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def client_aws_credential(headers: http.Headers) -> str | None:
    """The client's own AWS credential, for BYOK: its access key id (SigV4) or Bedrock API key (Bearer)."""
    auth = headers.get("authorization", "")
    if auth.startswith("AWS4-"):
        m = _SIGV4_CREDENTIAL.search(auth)
        return m.group(1) if m else None
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None
