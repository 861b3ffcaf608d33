"""What the UI may see of a flow: credential headers and query parameters redacted, known secret values
scrubbed from any text (flow JSON, bodies, exports, command results)."""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from typing import Any

from mitmproxy import flow as mflow
from mitmproxy import http

from addons.sinks import redaction


def _redact_pairs(pairs: Iterable[Any]) -> tuple[tuple[str, str], ...]:
    return tuple((name, redaction.redact_header_value(name, value)) for name, value in pairs)


def redact_flow_json(data: dict[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Redact a `flow_to_json` result in place (headers, trailers, credentials in the URL)."""
    secrets = tuple(secrets)
    request = data.get("request")
    if isinstance(request, dict) and "headers" in request:  # HTTP (DNS flows have no headers)
        request["headers"] = _redact_pairs(request["headers"])
        if "trailers" in request:
            request["trailers"] = _redact_pairs(request["trailers"])
        if isinstance(request.get("path"), str):
            request["path"] = redaction.scrub(redaction.redact_url(request["path"]), secrets)
    response = data.get("response")
    if isinstance(response, dict) and "headers" in response:
        response["headers"] = _redact_pairs(response["headers"])
        if "trailers" in response:
            response["trailers"] = _redact_pairs(response["trailers"])
    if isinstance(data.get("comment"), str) and secrets:
        data["comment"] = redaction.scrub(data["comment"], secrets)
    return data


# Credential values taken out of kept flows (see WebUi.scrub_sent_request): still scrubbed from bodies.
# Held here, not in flow.metadata, which mitmweb would export with the flow.
_removed: weakref.WeakKeyDictionary[mflow.Flow, frozenset[str]] = weakref.WeakKeyDictionary()


def remember_removed(f: mflow.Flow, values: set[str]) -> None:
    """Credential values taken out of this kept flow: `flow_secrets` still returns them."""
    _removed[f] = _removed.get(f, frozenset()) | values


def flow_secrets(f: mflow.Flow, base: Iterable[str] = ()) -> set[str]:
    """Configured secrets plus the credential values this flow carries (or carried)."""
    out = set(base) | _removed.get(f, frozenset())
    if isinstance(f, http.HTTPFlow):
        out |= redaction.credential_values(f.request.headers.items(multi=True))
        out |= {v for name, v in f.request.query.items(multi=True)
                if len(v) >= redaction.MIN_SECRET_LENGTH and redaction.is_sensitive_query_name(name)}
        if f.response is not None:
            out |= redaction.credential_values(f.response.headers.items(multi=True))
    return out


def redact_headers_in_place(headers: http.Headers) -> None:
    for name in {n.lower() for n in headers}:
        if redaction.is_sensitive_header(name):
            values = headers.get_all(name)
            headers.set_all(name, [redaction.redact_header_value(name, v) for v in values])


def redacted_copy(f: mflow.Flow, secrets: Iterable[str]) -> mflow.Flow:
    """A copy of the flow fit for export: credential headers redacted, secrets scrubbed from bodies."""
    secrets = flow_secrets(f, secrets)
    dup = f.copy()
    if isinstance(dup, http.HTTPFlow):
        for message in (dup.request, dup.response):
            if message is None:
                continue
            redact_headers_in_place(message.headers)
            if message.raw_content:
                message.raw_content = redaction.scrub_bytes(message.raw_content, secrets)
        dup.request.url = redaction.redact_url(dup.request.url)
    return dup


def scrub_value(value: Any, secrets: Iterable[str]) -> Any:
    """Scrub secrets from any JSON-like value (command results)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redaction.scrub(value, secrets)
    if isinstance(value, bytes):
        return redaction.scrub_bytes(value, secrets)
    if isinstance(value, list | tuple):
        return [scrub_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v, secrets) for k, v in value.items()}
    return value


_HEADER_TEXT = re.compile(r"([A-Za-z0-9_-]+):[ \t]*([^\r\n'\"]+)")


def redact_header_text(value: Any) -> Any:
    """Redact `Name: value` credential headers in exported text (raw HTTP, curl, httpie)."""
    if isinstance(value, list):
        return [redact_header_text(v) for v in value]
    if not isinstance(value, str) or ":" not in value:
        return value

    def one(m: re.Match[str]) -> str:
        name, val = m.group(1), m.group(2)
        if not redaction.is_sensitive_header(name):
            return m.group(0)
        return m.group(0).replace(val, redaction.redact_header_value(name, val.strip()), 1)

    return _HEADER_TEXT.sub(one, value)
