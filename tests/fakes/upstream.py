"""A local fake LLM upstream speaking the real Anthropic / OpenAI wire formats.

By default it answers like the provider would (streaming or blocking, chosen
by the body's `stream`): text, a tool call when the request offers tools and
is not itself carrying a tool result, thinking/reasoning when asked. Tests can
queue scripted replies (status, headers, raw body chunks, and gates that wait
for the test before sending the rest).
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.server import LoopbackServer, QuietHandler


@dataclass
class Gate:
    """A pause in a scripted body: the server waits until the test opens it."""

    event: threading.Event = field(default_factory=threading.Event)
    timeout: float = 30.0

    def open(self) -> None:
        self.event.set()


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes | Gate] = field(default_factory=list)
    # Close the connection without finishing the chunked body (a cut stream).
    truncate: bool = False
    # Wait for this gate before sending anything, status line included (a hung upstream).
    head_gate: Gate | None = None


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


_ids = itertools.count(1)


class FakeUpstream(LoopbackServer):
    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Seen] = []
        self.replies: deque[Reply] = deque()
        super().__init__(self._handler(), host, tls)

    def queue(self, reply: Reply) -> Reply:
        self.replies.append(reply)
        return reply

    def reset(self) -> None:
        self.requests.clear()
        self.replies.clear()

    def _handler(self) -> type[QuietHandler]:
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.handle_any()

            def do_POST(self) -> None:
                self.handle_any()

            def do_DELETE(self) -> None:
                self.handle_any()

            def do_HEAD(self) -> None:
                self.handle_any()

            def handle_any(self) -> None:
                headers, body = self.read_request()
                seen = Seen(self.command, self.path, headers, body)
                fake.requests.append(seen)
                reply = fake.replies.popleft() if fake.replies else default_reply(seen)
                self.send(reply)

            def send(self, reply: Reply) -> None:
                if reply.head_gate is not None:
                    reply.head_gate.event.wait(reply.head_gate.timeout)
                try:
                    self.send_response(reply.status)
                    headers = {"content-type": "application/json", **reply.headers}
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for chunk in reply.chunks:
                        if isinstance(chunk, Gate):
                            chunk.event.wait(chunk.timeout)
                            continue
                        if chunk:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                            self.wfile.flush()
                    if reply.truncate:
                        self.close_connection = True
                        return
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:  # the gateway went away (broken pipe, reset, TLS EOF)
                    self.close_connection = True

        return Handler


# -- default answers -----------------------------------------------------------------


def default_reply(seen: Seen) -> Reply:
    path = seen.path.partition("?")[0]
    if seen.method == "GET" and path.endswith("/models"):
        return json_reply({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
    if seen.method != "POST":
        return json_reply({"error": {"message": "not found", "type": "not_found"}}, status=404)
    try:
        body = seen.json()
    except ValueError:
        return json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": "bad json"}},
                          status=400)
    if path.endswith("/messages/count_tokens"):
        return json_reply({"input_tokens": 42})
    if path.endswith("/messages"):
        return anthropic_stream(body) if body.get("stream") else json_reply(anthropic_message(body))
    if path.endswith("/chat/completions"):
        return chat_stream(body) if body.get("stream") else json_reply(chat_completion(body))
    if path.endswith("/responses"):
        return responses_stream(body) if body.get("stream") else json_reply(responses_body(body))
    return json_reply({"error": {"message": f"no such path {path}", "type": "not_found"}}, status=404)


def json_reply(body: Any, status: int = 200) -> Reply:
    return Reply(status=status, chunks=[json.dumps(body).encode()])


def _wants_tool(body: dict[str, Any], result_marker: str) -> dict[str, Any] | None:
    """The first offered tool, unless the request already carries a tool result."""
    tools = body.get("tools") or []
    if not tools or result_marker in json.dumps(body.get("messages") or body.get("input") or [])[-4000:]:
        return None
    tool = tools[0]
    return tool.get("function", tool)


ANSWER = "Hello from the fake upstream."


def anthropic_message(body: dict[str, Any]) -> dict[str, Any]:
    n = next(_ids)
    content: list[dict[str, Any]] = []
    if (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"):
        content.append({"type": "thinking", "thinking": "Let me think.", "signature": "sig"})
    tool = _wants_tool(body, '"tool_result"')
    if tool:
        content.append({"type": "tool_use", "id": f"toolu_{n:04d}", "name": tool["name"], "input": {"x": 1}})
    else:
        content.append({"type": "text", "text": ANSWER})
    return {
        "id": f"msg_{n:04d}", "type": "message", "role": "assistant", "model": body.get("model", "m"),
        "content": content, "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 12, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 7},
    }


def anthropic_events(body: dict[str, Any]) -> list[bytes]:
    message = anthropic_message(body)
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    out = [sse("message_start", {"type": "message_start", "message": start}), sse("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "thinking":
            out.append(sse("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "thinking", "thinking": ""}}))
            out.append(sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                "type": "thinking_delta", "thinking": block["thinking"]}}))
            out.append(sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                "type": "signature_delta", "signature": "sig"}}))
        elif block["type"] == "tool_use":
            out.append(sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                **block, "input": {}}}))
            for part in ('{"x"', ": 1}"):
                out.append(sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": part}}))
        else:
            out.append(sse("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            for word in ANSWER.split(" "):
                out.append(sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "text_delta", "text": word + " "}}))
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(sse("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": message["stop_reason"], "stop_sequence": None}, "usage": {"output_tokens": 12}}))
    out.append(sse("message_stop", {"type": "message_stop"}))
    return out


def anthropic_stream(body: dict[str, Any]) -> Reply:
    return Reply(headers={"content-type": "text/event-stream"}, chunks=list(anthropic_events(body)))


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    n = next(_ids)
    tool = _wants_tool(body, '"role": "tool"')
    message: dict[str, Any] = {"role": "assistant", "content": None if tool else ANSWER, "refusal": None}
    if tool:
        message["tool_calls"] = [{"id": f"call_{n:04d}", "type": "function",
                                  "function": {"name": tool["name"], "arguments": '{"x": 1}'}}]
    return {
        "id": f"chatcmpl-{n:04d}", "object": "chat.completion", "created": 1700000000,
        "model": body.get("model", "m"),
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": 130, "completion_tokens": 9, "total_tokens": 139,
                  "prompt_tokens_details": {"cached_tokens": 100},
                  "completion_tokens_details": {"reasoning_tokens": 3}},
    }


def chat_chunks(body: dict[str, Any]) -> list[bytes]:
    full = chat_completion(body)
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
            "model": full["model"]}
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(None, {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish}], **extra})

    out = [chunk({"role": "assistant", "content": ""})]
    message = full["choices"][0]["message"]
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        out.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                          "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        for part in ('{"x"', ": 1}"):
            out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
    else:
        for word in ANSWER.split(" "):
            out.append(chunk({"content": word + " "}))
    out.append(chunk({}, full["choices"][0]["finish_reason"]))
    if include_usage:
        out.append(sse(None, {**base, "choices": [], "usage": full["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return out


def chat_stream(body: dict[str, Any]) -> Reply:
    return Reply(headers={"content-type": "text/event-stream"}, chunks=chat_chunks(body))


def responses_body(body: dict[str, Any]) -> dict[str, Any]:
    n = next(_ids)
    output: list[dict[str, Any]] = []
    if body.get("reasoning"):
        output.append({"id": f"rs_{n:04d}", "type": "reasoning",
                       "summary": [{"type": "summary_text", "text": "Thinking about it."}]})
    tool = _wants_tool(body, '"function_call_output"')
    if tool:
        output.append({"id": f"fc_{n:04d}", "type": "function_call", "status": "completed",
                       "call_id": f"call_{n:04d}", "name": tool["name"], "arguments": '{"x": 1}'})
    else:
        output.append({"id": f"msg_{n:04d}", "type": "message", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]})
    return {
        "id": f"resp_{n:04d}", "object": "response", "created_at": 1700000000, "status": "completed",
        "model": body.get("model", "m"), "output": output,
        "usage": {"input_tokens": 230, "input_tokens_details": {"cached_tokens": 200}, "output_tokens": 20,
                  "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 250},
    }


def responses_events(body: dict[str, Any]) -> list[bytes]:
    full = responses_body(body)
    seq = itertools.count()
    created = {**full, "status": "in_progress", "output": [], "usage": None}

    def ev(kind: str, **fields: Any) -> bytes:
        return sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

    out = [ev("response.created", response=created), ev("response.in_progress", response=created)]
    for i, item in enumerate(full["output"]):
        out.append(ev("response.output_item.added", output_index=i, item={**item, "status": "in_progress"}))
        if item["type"] == "message":
            for word in ANSWER.split(" "):
                out.append(ev("response.output_text.delta", item_id=item["id"], output_index=i,
                              content_index=0, delta=word + " "))
        elif item["type"] == "function_call":
            out.append(ev("response.function_call_arguments.delta", item_id=item["id"], output_index=i,
                          delta=item["arguments"]))
        elif item["type"] == "reasoning":
            text = item["summary"][0]["text"]
            out.append(ev("response.reasoning_summary_text.delta", item_id=item["id"], output_index=i,
                          summary_index=0, delta=text))
            out.append(ev("response.reasoning_summary_text.done", item_id=item["id"], output_index=i,
                          summary_index=0, text=text))
        out.append(ev("response.output_item.done", output_index=i, item=item))
    out.append(ev("response.completed", response=full))
    return out


def responses_stream(body: dict[str, Any]) -> Reply:
    return Reply(headers={"content-type": "text/event-stream"}, chunks=responses_events(body))
