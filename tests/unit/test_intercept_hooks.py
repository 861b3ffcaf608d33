"""The Interceptor's hooks in process (mitmproxy's taddons/tflow): an admitted flow through request,
responseheaders, the stream tap chunk by chunk, response and error — what goes upstream, what the
client gets, and which records are emitted. Plus each provider's credential injection."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from addons.chain.auth import Identity
from addons.chain.intercept import Interceptor
from addons.flow.records import InterceptionEnd, InterceptionStart, PromptRecord, Record, TokenUsageRecord
from addons.flow.state import FlowContext, FlowStates
from addons.providers.anthropic import ANTHROPIC
from addons.providers.base import Provider
from addons.providers.copilot import COPILOT
from addons.providers.openai import OPENAI
from addons.settings.instances import Instance
from addons.upstreams.direct import DirectUpstream, StreamTap
from addons.upstreams.keypool import KeyPools
from tests.fakes.upstream import anthropic_events, chat_chunks

ANTHROPIC_KEY, OPENAI_KEY = "sk-ant-hooks-0000000001", "sk-openai-hooks-000001"
PROMPT = "What is in the repository?"


def instance(kind: str, *keys: str, base_url: str = "https://upstream.test") -> Instance:
    return Instance(type=kind, name=f"{kind}-1", keys=keys, base_url=base_url, dump_dir=None, bedrock=None,
                    source="indexed")


class Hooks:
    def __init__(self, interceptor: Interceptor, flows: FlowStates, records: list[Record]) -> None:
        self.interceptor, self.flows, self.records = interceptor, flows, records

    def admit(self, provider: Provider, inst: Instance, path: str, body: bytes, method: str = "POST",
              **headers: str) -> tuple[http.HTTPFlow, FlowContext]:
        """A flow as routing.admit leaves it: its FlowContext attached, the gateway key already removed."""
        request = tutils.treq(method=method.encode(), path=path.encode(), content=body,
                              headers=http.Headers(host="127.0.0.1:8888", **headers))
        flow = tflow.tflow(req=request)
        route = provider.route(method, path)
        assert route is not None
        ctx = FlowContext(instance=inst, provider=provider, route=route, api_path=path, query="",
                          identity=Identity("u1", "alice", "k1", False), byok=False,
                          received_at=dt.datetime.now(dt.UTC))
        self.flows.attach(flow, ctx)
        return flow, ctx

    def send(self, flow: http.HTTPFlow) -> None:
        self.interceptor.requestheaders(flow)
        self.interceptor.request(flow)

    def stream_back(self, flow: http.HTTPFlow, chunks: list[bytes]) -> bytes:
        """The upstream answers with SSE: headers, then each chunk through the tap, then the end."""
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        self.interceptor.responseheaders(flow)
        tap = flow.response.stream
        assert isinstance(tap, StreamTap)
        out = b""
        for chunk in [*chunks, b""]:  # b"": the end of the body
            result = tap(chunk)
            out += result if isinstance(result, bytes) else b"".join(result)
        self.interceptor.response(flow)
        return out

    def of(self, kind: type[Any]) -> list[Any]:
        return [r for r in self.records if isinstance(r, kind)]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    records: list[Record] = []
    flows = FlowStates()
    interceptor = Interceptor(flows, records.append)
    with taddons.context(interceptor):  # declares aigw_max_body_size
        yield Hooks(interceptor, flows, records)


def messages_body(stream: bool = True) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": PROMPT}]}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-5", "stream": True, "messages": [{"role": "user", "content": PROMPT}], **extra}


def test_anthropic_stream_is_forwarded_tapped_and_recorded(hooks: Hooks) -> None:
    body = messages_body()
    flow, ctx = hooks.admit(ANTHROPIC, instance("anthropic", ANTHROPIC_KEY), "/v1/messages", orjson.dumps(body),
                            **{"accept-encoding": "gzip", "user-agent": "claude-cli/2.0.1 (external, cli)"})
    hooks.send(flow)

    assert flow.response is None
    assert flow.request.url == "https://upstream.test/v1/messages"
    assert flow.request.headers["x-api-key"] == ANTHROPIC_KEY and "authorization" not in flow.request.headers
    assert flow.request.headers["accept-encoding"] == "identity"  # the tap must see plain bytes
    assert hooks.flows.chosen_upstream(flow) == ("https", "upstream.test", 443)
    assert ctx.provider_key == ANTHROPIC_KEY
    start, prompt = hooks.records
    assert isinstance(start, InterceptionStart) and isinstance(prompt, PromptRecord)
    assert (start.provider, start.provider_name, start.model) == ("anthropic", "anthropic-1", "claude-sonnet-4-5")
    assert start.credential_kind == "centralized" and start.credential_hint != ANTHROPIC_KEY
    assert start.metadata["route"] == "/v1/messages" and start.metadata["stream"] is True
    assert prompt.prompt == PROMPT and prompt.interception_id == start.id

    chunks = anthropic_events(body)
    assert hooks.stream_back(flow, chunks) == b"".join(chunks)  # relayed unchanged

    (usage,) = hooks.of(TokenUsageRecord)
    assert (usage.input_tokens, usage.output_tokens) == (25, 12)
    assert (usage.cache_read_input_tokens, usage.cache_write_input_tokens) == (100, 7)
    (end,) = hooks.of(InterceptionEnd)
    assert end.id == start.id and end.status == "completed" and end.first_chunk_at is not None
    assert end.metadata["http_status"] == 200 and end.finish_reasons == ("end_turn",)
    assert isinstance(hooks.records[-1], InterceptionEnd)


def test_chat_stream_asks_for_usage_and_hides_it_from_the_client(hooks: Hooks) -> None:
    flow, ctx = hooks.admit(OPENAI, instance("openai", OPENAI_KEY), "/chat/completions",
                            orjson.dumps(chat_body(stream_options={"other": 1})),
                            authorization="Bearer client-value")
    hooks.send(flow)

    sent = json.loads(flow.request.content or b"")
    assert sent["stream_options"] == {"other": 1, "include_usage": True}
    assert ctx.interception is not None and ctx.interception.hide_usage
    assert flow.request.headers["authorization"] == f"Bearer {OPENAI_KEY}" and "x-api-key" not in flow.request.headers

    upstream_chunks = chat_chunks(sent)
    assert b'"usage": null' in upstream_chunks[0] and b'"usage": {' in upstream_chunks[-2]
    client_saw = hooks.stream_back(flow, upstream_chunks)
    assert b"usage" not in client_saw  # neither the null fields nor the usage-only chunk
    assert client_saw.endswith(b"data: [DONE]\n\n") and b'"finish_reason": "stop"' in client_saw
    (usage,) = hooks.of(TokenUsageRecord)
    assert usage.output_tokens == 9
    (end,) = hooks.of(InterceptionEnd)
    assert end.status == "completed"


def test_chat_stream_whose_client_asked_for_usage_is_not_rewritten(hooks: Hooks) -> None:
    raw = orjson.dumps(chat_body(stream_options={"include_usage": True}))
    flow, ctx = hooks.admit(OPENAI, instance("openai", OPENAI_KEY), "/chat/completions", raw)
    hooks.send(flow)
    assert flow.request.content == raw
    assert ctx.interception is not None and not ctx.interception.hide_usage
    upstream_chunks = chat_chunks(json.loads(raw))
    assert hooks.stream_back(flow, upstream_chunks) == b"".join(upstream_chunks)
    assert len(hooks.of(TokenUsageRecord)) == 1


@pytest.mark.parametrize(("provider", "kind", "path", "shape"), [
    (ANTHROPIC, "anthropic", "/v1/messages", "anthropic"),
    (OPENAI, "openai", "/chat/completions", "openai"),
    (OPENAI, "openai", "/responses", "openai"),
    (COPILOT, "copilot", "/v1/messages", "anthropic"),  # the API decides the shape, not the instance type
])
def test_a_body_that_is_not_json_is_refused_in_the_apis_shape(hooks: Hooks, provider: Provider, kind: str,
                                                              path: str, shape: str) -> None:
    flow, _ = hooks.admit(provider, instance(kind, "sk-hooks-key-000000001"), path, b"{not json")
    hooks.send(flow)

    assert flow.response is not None and flow.response.status_code == 400
    assert flow.response.headers["content-type"] == "application/json"
    error = json.loads(flow.response.content or b"")
    if shape == "anthropic":
        assert error == {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "request body is not a JSON object"}}
    else:
        assert error == {"error": {"message": "request body is not a JSON object", "type": "invalid_request_error",
                                   "param": None, "code": "invalid_request_error"}}
    assert hooks.flows.chosen_upstream(flow) is None  # never sent upstream
    start, end = hooks.records
    assert isinstance(start, InterceptionStart) and isinstance(end, InterceptionEnd)
    assert end.status == "failed" and end.metadata["error"] == "request body is not a JSON object"
    assert end.metadata["http_status"] == 400


def test_a_client_that_leaves_mid_stream_is_recorded_as_cancelled(hooks: Hooks) -> None:
    body = messages_body()
    flow, _ = hooks.admit(ANTHROPIC, instance("anthropic", ANTHROPIC_KEY), "/v1/messages", orjson.dumps(body))
    hooks.send(flow)
    flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    hooks.interceptor.responseheaders(flow)
    tap = flow.response.stream
    assert isinstance(tap, StreamTap)
    for chunk in anthropic_events(body)[:4]:
        tap(chunk)
    flow.error = mflow.Error("Client disconnected.")
    hooks.interceptor.error(flow)

    (end,) = hooks.of(InterceptionEnd)
    assert end.status == "cancelled" and end.metadata["error"] == "Client disconnected."
    assert hooks.of(TokenUsageRecord)[0].input_tokens == 25  # what the stream had said so far


def test_a_blocking_answer_is_parsed_whole(hooks: Hooks) -> None:
    flow, _ = hooks.admit(ANTHROPIC, instance("anthropic", ANTHROPIC_KEY), "/v1/messages",
                          orjson.dumps(messages_body(stream=False)))
    hooks.send(flow)
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
              "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 3, "output_tokens": 4}}
    flow.response = http.Response.make(200, orjson.dumps(answer), {"content-type": "application/json"})
    hooks.interceptor.responseheaders(flow)
    assert flow.response.stream is False
    hooks.interceptor.response(flow)
    (usage,) = hooks.of(TokenUsageRecord)
    assert (usage.input_tokens, usage.output_tokens, usage.provider_response_id) == (3, 4, "msg_1")
    (end,) = hooks.of(InterceptionEnd)
    assert end.status == "completed" and end.metadata["response_id"] == "msg_1"


def test_every_key_cooling_down_is_a_429_before_anything_goes_upstream() -> None:
    records: list[Record] = []
    flows = FlowStates()
    pools = KeyPools()
    direct = DirectUpstream(pools)
    interceptor = Interceptor(flows, records.append, lambda ctx: direct)
    inst = instance("anthropic", "sk-ant-hooks-key-a-0001", "sk-ant-hooks-key-b-0001")
    with taddons.context(interceptor):
        hooks = Hooks(interceptor, flows, records)
        pools.pool(inst).report("sk-ant-hooks-key-a-0001", 429, "30")
        flow, _ = hooks.admit(ANTHROPIC, inst, "/v1/messages", orjson.dumps(messages_body()))
        hooks.send(flow)
        assert flow.response is None and flow.request.headers["x-api-key"] == "sk-ant-hooks-key-b-0001"

        pools.pool(inst).report("sk-ant-hooks-key-b-0001", 429, "20")
        flow, _ = hooks.admit(ANTHROPIC, inst, "/v1/messages", orjson.dumps(messages_body()))
        hooks.send(flow)
    assert flow.response is not None and flow.response.status_code == 429
    assert flow.response.headers["retry-after"] == "20"
    assert json.loads(flow.response.content or b"")["error"]["type"] == "rate_limit_error"
    assert flows.chosen_upstream(flow) is None


@pytest.mark.parametrize(("provider", "method", "path", "header"), [
    (ANTHROPIC, "POST", "/v1/messages", "x-api-key"),
    (ANTHROPIC, "GET", "/v1/models", "x-api-key"),  # pass-through: the provider's header
    (OPENAI, "POST", "/chat/completions", "authorization"),
    (OPENAI, "POST", "/responses", "authorization"),
    (OPENAI, "GET", "/models", "authorization"),
    (COPILOT, "POST", "/chat/completions", "authorization"),
    (COPILOT, "POST", "/v1/messages", "x-api-key"),  # Copilot's Messages route speaks Anthropic
    (COPILOT, "GET", "/models", "authorization"),
])
def test_each_provider_puts_its_key_in_the_header_its_api_reads(provider: Provider, method: str, path: str,
                                                                header: str) -> None:
    route = provider.route(method, path)
    assert route is not None
    headers = http.Headers(authorization="Bearer client-credential", **{"x-api-key": "client-credential"})
    provider.put_key(headers, route.api, "sk-provider-key-000001")
    expected = "sk-provider-key-000001" if header == "x-api-key" else "Bearer sk-provider-key-000001"
    assert dict(headers) == {header: expected}  # the other credential header is gone
