"""TLS for the proxy tests: a test CA, certificates it signs, and TLS fake upstreams.

The gateway is told to trust the test CA (`--set ssl_verify_upstream_trusted_ca`),
so a fake upstream on 127.0.0.1 can pose as api.anthropic.com & co. The fake also
speaks the Responses API over a WebSocket (`GET …/responses`, `Upgrade: websocket`),
answering each `response.create` with the same events as its SSE stream.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import ssl
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import wsproto
import wsproto.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.upstream import FakeUpstream, responses_events

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


@dataclass
class Pki:
    """A throw-away CA in `directory`; issues server certificates for names and IPs."""

    directory: Path

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.ca = (
            x509.CertificateBuilder().subject_name(_name("aigw test CA")).issuer_name(_name("aigw test CA"))
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path = self.directory / "test-ca.pem"
        self.ca_path.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def server_context(self, *names: str, self_signed: bool = False) -> ssl.SSLContext:
        """A server SSLContext with a certificate for `names` (signed by the CA unless self_signed)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        issuer_key, issuer = (key, _name(names[0])) if self_signed else (self.ca_key, self.ca.subject)
        builder = (
            x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        stem = self.directory / f"{names[0].replace(':', '_')}-{x509.random_serial_number()}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context


class TlsFakeUpstream(FakeUpstream):
    """The fake LLM upstream over TLS on `host`, plus Responses-over-WebSocket."""

    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.ws_messages: list[dict[str, Any]] = []
        self.ws_handshakes: list[tuple[str, dict[str, str]]] = []
        super().__init__(host, context)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def reset(self) -> None:
        super().reset()
        self.ws_messages.clear()
        self.ws_handshakes.clear()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base = super()._handler()
        fake = self

        class Handler(base):  # type: ignore[valid-type, misc]
            def do_GET(self) -> None:
                if self.headers.get("upgrade", "").lower() == "websocket":
                    self.websocket()
                else:
                    super().do_GET()

            def websocket(self) -> None:
                fake.ws_handshakes.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                accept = base64.b64encode(hashlib.sha1(
                    (self.headers["sec-websocket-key"] + WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("upgrade", "websocket")
                self.send_header("connection", "Upgrade")
                self.send_header("sec-websocket-accept", accept)
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                serve_websocket(self.connection, fake)

        return Handler


def serve_websocket(sock: Any, fake: TlsFakeUpstream) -> None:
    """Answer each `response.create` with the fake's Responses events, one JSON per message."""
    conn = wsproto.Connection(wsproto.ConnectionType.SERVER)
    text = ""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        conn.receive_data(data or None)
        for event in conn.events():
            if isinstance(event, wsproto.events.TextMessage):
                text += event.data
                if not event.message_finished:
                    continue
                message, text = json.loads(text), ""
                fake.ws_messages.append(message)
                if message.get("type") == "response.create" and message.get("metadata") != {"fake": "silent"}:
                    body = {k: v for k, v in message.items() if k != "type"}
                    for chunk in responses_events(body):
                        payload = chunk.split(b"data: ", 1)[1].strip().decode()
                        sock.sendall(conn.send(wsproto.events.TextMessage(data=payload)))
            elif isinstance(event, wsproto.events.Ping):
                sock.sendall(conn.send(event.response()))
            elif isinstance(event, wsproto.events.CloseConnection):
                if conn.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                    sock.sendall(conn.send(event.response()))
                return
        if not data:
            return
