"""The connect timeout's bookkeeping: which waiting flows it ends, and what the client is told."""

from __future__ import annotations

import asyncio
import datetime as dt

import orjson
from mitmproxy import connection, http
from mitmproxy.test import tflow, tutils

from addons.app.serve import json_error_response
from addons.chain.auth import Identity
from addons.chain.timeouts import UpstreamTimeouts
from addons.flow.state import FlowContext, FlowStates, Interception
from addons.providers.anthropic import ANTHROPIC
from addons.settings.instances import Instance
from addons.wire.model import RequestInfo


def flow_to(flows: FlowStates, client: connection.Client, instance: str, host: str, port: int) -> http.HTTPFlow:
    flow = tflow.tflow(client_conn=client, req=tutils.treq(method=b"POST", path=b"/v1/messages", host=host,
                                                           port=port))
    route = ANTHROPIC.route("POST", "/v1/messages")
    assert route is not None
    ctx = FlowContext(instance=Instance(type="anthropic", name=instance, keys=(), base_url=f"https://{host}:{port}",
                                        dump_dir=None, bedrock=None, source="indexed"),
                      provider=ANTHROPIC, route=route, api_path="/v1/messages", query="",
                      identity=Identity("u1", "alice", "k1", False), byok=False, received_at=dt.datetime.now(dt.UTC))
    ctx.interception = Interception(id=instance, api=route.api, started_at=dt.datetime.now(dt.UTC),
                                    info=RequestInfo())
    flows.attach(flow, ctx)
    return flow


async def test_only_flows_waiting_for_the_timed_out_upstream_fail() -> None:
    """One HTTP/2 client connection, streams to two upstreams: the one that hangs fails, the other does not."""
    timeouts = UpstreamTimeouts(FlowStates(), None, connect=1.0, idle=None)
    client = tflow.tclient_conn()
    hung = flow_to(timeouts.flows, client, "slow", "10.0.0.1", 443)
    fine = flow_to(timeouts.flows, client, "fast", "10.0.0.2", 443)
    for flow in (hung, fine):
        timeouts.request(flow)
    server = connection.Server(address=("10.0.0.1", 443))
    opening = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    timeouts.connecting[server] = (0.0, client, opening)  # past its deadline
    await timeouts.check()
    assert timeouts.flows.get(hung).upstream_error == "upstream connect timeout after 1s"  # type: ignore[union-attr]
    assert timeouts.flows.get(fine).upstream_error is None  # type: ignore[union-attr]
    assert timeouts.watches[hung].fired and not timeouts.watches[fine].fired
    try:
        await opening
    except asyncio.CancelledError as e:
        message = str(e)
    assert message.startswith("upstream connect timeout after 1s: instance 'slow' at 10.0.0.1:443")


def test_the_client_gets_a_504_naming_the_timeout_and_the_instance() -> None:
    message = "upstream connect timeout after 1s: instance 'slow' at 10.0.0.1:443 did not accept the connection"
    head, body = json_error_response(502, message).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 504 ")
    error = orjson.loads(body)["error"]
    assert (error["type"], error["message"]) == ("timeout_error", message)
    refused = json_error_response(502, "Connection refused")
    assert refused.startswith(b"HTTP/1.1 502 ")
