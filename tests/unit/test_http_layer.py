"""aigw's HTTP layer takes the place of mitmproxy's wherever mitmproxy's next_layer chose one, and its
streams mark how a request arrived (the behaviour behind both is tested end to end in tests/e2e/test_proxy.py
and tests/security/test_body.py)."""

from __future__ import annotations

from mitmproxy import options
from mitmproxy.addons.next_layer import NextLayer as MitmproxyNextLayer
from mitmproxy.proxy import context, events, layer
from mitmproxy.proxy.layers import ClientTLSLayer, HttpLayer, modes
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons.app.http_layer import AigwHttpLayer, AigwHttpLayers, AigwHttpStream
from addons.flow.state import ABSOLUTE_FORM, PROXIED, TUNNELLED

# The first bytes of a TLS record carrying a ClientHello: enough for mitmproxy to pick its TLS layer.
TLS_START = bytes.fromhex("160301") + b"\x00\x05hello"


def choose(data: bytes) -> tuple[layer.NextLayer, context.Context]:
    """What mitmproxy's next_layer, then aigw's, choose for a regular-proxy client that sent `data` first."""
    builtin = MitmproxyNextLayer()
    with taddons.context(builtin) as tctx:
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse("regular")
        ctx = context.Context(client, tctx.options)
        modes.HttpProxy(ctx)
        nextlayer = layer.NextLayer(ctx)
        nextlayer.events.append(events.DataReceived(client, data))
        builtin.next_layer(nextlayer)
        AigwHttpLayers().next_layer(nextlayer)
    return nextlayer, ctx


def test_a_plain_http_client_gets_aigws_layer() -> None:
    nextlayer, ctx = choose(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
    chosen = nextlayer.layer
    assert isinstance(chosen, AigwHttpLayer) and chosen.mode is HTTPMode.regular
    assert ctx.layers[-1] is chosen and not any(type(x) is HttpLayer for x in ctx.layers)


def test_under_tls_to_the_listener_the_http_layer_is_swapped_in_place() -> None:
    nextlayer, ctx = choose(TLS_START)
    tls = nextlayer.layer
    assert isinstance(tls, ClientTLSLayer) and isinstance(tls.child_layer, AigwHttpLayer)
    assert ctx.layers[-2:] == [tls, tls.child_layer]


def test_a_choice_without_http_is_kept() -> None:
    nextlayer = layer.NextLayer(context.Context(tflow.tclient_conn(), options.Options()))
    AigwHttpLayers().next_layer(nextlayer)
    assert nextlayer.layer is None


def stream_under(*outer: layer.Layer, mode: HTTPMode, ctx: context.Context) -> AigwHttpStream:
    http_layer = AigwHttpLayer(ctx, mode)
    stream = AigwHttpStream(http_layer.context.fork(), 1)
    assert stream.context.layers[-2:] == [http_layer, stream] and all(o in stream.context.layers for o in outer)
    return stream


def test_streams_mark_how_a_request_arrived() -> None:
    with taddons.context() as tctx:
        ctx = context.Context(tflow.tclient_conn(), tctx.options)
        proxy = modes.HttpProxy(ctx)
        listener = stream_under(proxy, mode=HTTPMode.regular, ctx=ctx)

        listener.flow = tflow.tflow(req=tutils.treq(authority=b"example.com:80"))
        listener.mark_arrival()
        assert listener.flow.metadata[PROXIED] == ABSOLUTE_FORM

        listener.flow = tflow.tflow(req=tutils.treq(authority=b""))  # origin form: a gateway request
        listener.mark_arrival()
        assert PROXIED not in listener.flow.metadata

        tunnel_ctx = listener.context.fork()  # what a CONNECT's stream hands its tunnel
        inner = stream_under(proxy, listener, mode=HTTPMode.transparent, ctx=tunnel_ctx)
        inner.flow = tflow.tflow(req=tutils.treq(authority=b""))
        inner.mark_arrival()
        assert inner.flow.metadata[PROXIED] == TUNNELLED
