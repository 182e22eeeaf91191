"""Mutual authentication on a stream before any 9P byte (wire format v1, docs/identity.md).

    client -> server  HELLO   nonce_c(32) | client certificate (DER)
    server -> client  PROVE   nonce_s(32) | u16 length | server certificate (DER) | sig_s(64)
    client -> server  PROOF   sig_c(64)
    server -> client  RESULT  status(1: 0 admitted, 1 refused) | reason (UTF-8)

Every frame is ``"C9AU" | version (1) | type (1) | payload length (u16 BE) | payload``, at most
8 KiB of payload. sig_s = Ed25519 over ``"clusterctl-auth/1 server\\0" | nonce_c | nonce_s |
sha256(cert_c) | sha256(cert_s)``, sig_c the same with ``client``; each side checks the other's
certificate against the cluster CA (issuer signature, validity dates, not a CA, Ed25519 key).
Fresh nonces on both sides make a recorded transcript useless; the role label stops a
signature being reflected. After RESULT 0 the same socket carries plain 9P (WireGuard
encrypts the link), so the socket can be handed to the kernel (``trans=fd``).

The server side is ``Gate`` (an asyncio protocol that hands the transport to the 9P
connection once admitted); the client side, blocking, is ``client_handshake``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.identity import HostIdentity, common_name, fingerprint, not_after, not_before, now_utc, verify_issued

log = logging.getLogger("agent.auth")

MAGIC = b"C9AU"
VERSION = 1
HELLO, PROVE, PROOF, RESULT = 1, 2, 3, 4
NAMES = {HELLO: "HELLO", PROVE: "PROVE", PROOF: "PROOF", RESULT: "RESULT"}
ADMITTED, REFUSED = 0, 1
NONCE = 32
SIG = 64
MAX_PAYLOAD = 8192
FRAME = struct.Struct(">4sBBH")
TIMEOUT = 10.0
_U16 = struct.Struct(">H")


class HandshakeError(ConnectionError):
    """The peer was not admitted (or did not admit us); the message says why."""


@dataclass(frozen=True)
class Peer:
    host: str
    cluster: str
    fingerprint: bytes


# -- frames ---------------------------------------------------------------------------------
def frame(kind: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("handshake payload too large")
    return FRAME.pack(MAGIC, VERSION, kind, len(payload)) + payload


def parse_header(header: bytes, expect: int) -> int:
    """Payload length of a frame header, or HandshakeError for anything unexpected."""
    magic, version, kind, length = FRAME.unpack(header)
    if magic != MAGIC:
        raise HandshakeError("not a clusterctl handshake")
    if version != VERSION:
        raise HandshakeError(f"handshake version {version} (this side speaks {VERSION})")
    if kind != expect:
        raise HandshakeError(f"expected {NAMES[expect]}, got frame type {kind}")
    if length > MAX_PAYLOAD:
        raise HandshakeError(f"handshake frame of {length} bytes")
    return int(length)


def transcript(role: bytes, nonce_c: bytes, nonce_s: bytes, fp_c: bytes, fp_s: bytes) -> bytes:
    return b"clusterctl-auth/1 " + role + b"\0" + nonce_c + nonce_s + fp_c + fp_s


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -- certificate checks ---------------------------------------------------------------------
def check_peer_certificate(der: bytes, ca_cert: x509.Certificate) -> x509.Certificate:
    """The peer's certificate, if the cluster CA issued it and it is valid now."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise HandshakeError("the peer's certificate does not parse") from None
    try:
        verify_issued(cert, ca_cert)
    except InvalidSignature:
        raise HandshakeError(f"certificate of {common_name(cert)!r} is not from this cluster's CA") from None
    now = now_utc()
    for c, what in ((cert, "the peer's certificate"), (ca_cert, "the cluster CA")):
        if now < not_before(c):
            raise HandshakeError(f"{what} is not valid yet")
        if now > not_after(c):
            raise HandshakeError(f"{what} has expired")
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise HandshakeError("the peer presented a CA certificate")
    except x509.ExtensionNotFound:
        raise HandshakeError("the peer's certificate has no basic constraints") from None
    if not isinstance(cert.public_key(), ed25519.Ed25519PublicKey) or not common_name(cert):
        raise HandshakeError("the peer's certificate is not a clusterctl host certificate")
    return cert


def _verify(cert: x509.Certificate, signature: bytes, message: bytes) -> None:
    key = cert.public_key()
    assert isinstance(key, ed25519.Ed25519PublicKey)  # check_peer_certificate made sure
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise HandshakeError(f"{common_name(cert)!r} did not prove it holds its key") from None


# -- server side (sans I/O) -----------------------------------------------------------------
class ServerHandshake:
    """Feed it bytes; it answers with bytes to send, and ends admitted or refused."""

    def __init__(self, ident: HostIdentity) -> None:
        self.ident = ident
        self.buf = bytearray()
        self.expect = HELLO
        self.nonce_s = os.urandom(NONCE)
        self.nonce_c = b""
        self.peer_cert: x509.Certificate | None = None
        self.peer: Peer | None = None

    def _next(self) -> bytes | None:
        if len(self.buf) < FRAME.size:
            return None
        length = parse_header(bytes(self.buf[:FRAME.size]), self.expect)
        if len(self.buf) < FRAME.size + length:
            return None
        payload = bytes(self.buf[FRAME.size:FRAME.size + length])
        del self.buf[:FRAME.size + length]
        return payload

    def feed(self, data: bytes) -> bytes:
        """Bytes to send back; HandshakeError when the peer is refused. After admission,
        ``self.buf`` holds whatever 9P bytes came along."""
        self.buf += data
        out = b""
        while self.peer is None:
            payload = self._next()
            if payload is None:
                break
            if self.expect == HELLO:
                if len(payload) <= NONCE:
                    raise HandshakeError("HELLO too short")
                self.nonce_c = payload[:NONCE]
                self.peer_cert = check_peer_certificate(payload[NONCE:], self.ident.ca_cert)
                mine = _der(self.ident.cert)
                sig = self.ident.key.sign(self._transcript(b"server"))
                out += frame(PROVE, self.nonce_s + _U16.pack(len(mine)) + mine + sig)
                self.expect = PROOF
            else:
                assert self.peer_cert is not None
                if len(payload) != SIG:
                    raise HandshakeError("PROOF of the wrong size")
                _verify(self.peer_cert, payload, self._transcript(b"client"))
                self.peer = Peer(common_name(self.peer_cert), self.ident.cluster, fingerprint(self.peer_cert))
                out += frame(RESULT, bytes([ADMITTED]))
        return out

    def _transcript(self, role: bytes) -> bytes:
        assert self.peer_cert is not None
        return transcript(role, self.nonce_c, self.nonce_s, fingerprint(self.peer_cert), fingerprint(self.ident.cert))


def refusal(reason: str) -> bytes:
    return frame(RESULT, bytes([REFUSED]) + reason.encode()[:200])


class Gate(asyncio.Protocol):
    """The server's protocol until the peer is admitted; then the transport goes to the 9P
    connection ``make()`` returns. Refused or silent peers are dropped; nothing else stops."""

    def __init__(self, ident: HostIdentity, make: Callable[[], asyncio.BaseProtocol],
                 on_event: Callable[..., Any] | None = None, timeout: float = TIMEOUT) -> None:
        self.hs = ServerHandshake(ident)
        self.make = make
        self.on_event = on_event
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.where = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.where = str(transport.get_extra_info("peername"))
        self.timer = asyncio.get_running_loop().call_later(self.timeout, self._refuse, "handshake timed out")

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            out = self.hs.feed(data)
        except HandshakeError as exc:
            self._refuse(str(exc))
            return
        except Exception as exc:  # a bug must cost one connection, never the server
            log.exception("handshake from %s failed", self.where)
            self._refuse(f"internal error: {type(exc).__name__}")
            return
        if out:
            self.transport.write(out)
        if self.hs.peer is not None:
            self._admit()

    def _admit(self) -> None:
        assert self.transport is not None and self.hs.peer is not None
        if self.timer is not None:
            self.timer.cancel()
        conn = self.make()
        self.transport.set_protocol(conn)
        conn.connection_made(self.transport)
        if hasattr(conn, "peer"):
            conn.peer = f"{self.hs.peer.host}@{self.where}"
        if hasattr(conn, "admitted"):
            conn.admitted = self.hs.peer.host
        self._event("admitted", host=self.hs.peer.host)
        rest = bytes(self.hs.buf)
        if rest and isinstance(conn, asyncio.BufferedProtocol):
            view = conn.get_buffer(len(rest))
            view[:len(rest)] = rest
            conn.buffer_updated(len(rest))

    def _refuse(self, reason: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.timer is not None:
            self.timer.cancel()
        log.warning("peer %s refused: %s", self.where, reason)
        self._event("refused", reason=reason)
        self.transport.write(refusal(reason))
        self.transport.close()  # after the refusal is written

    def _event(self, state: str, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event("auth", state=state, peer=self.where, **fields)
            except Exception:
                log.exception("event hook failed")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


def gate_for(ident: HostIdentity, timeout: float = TIMEOUT
             ) -> Callable[[Callable[[], asyncio.BaseProtocol], Callable[..., Any]], Gate]:
    """What ``agent.ninep.server.Server(gate=...)`` takes: every connection is gated, and
    admissions and refusals go to the server's event stream."""
    return lambda make, on_event: Gate(ident, make, on_event, timeout)


# -- client side (blocking) -----------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise HandshakeError("the server closed the connection during the handshake")
        out += chunk
    return bytes(out)


def _recv_frame(sock: socket.socket, expect: int) -> bytes:
    header = _recv_exact(sock, FRAME.size)
    magic, _v, kind, _length = FRAME.unpack(header)
    if magic == MAGIC and kind == RESULT and expect != RESULT:
        # The server refused early (it says why); read the reason rather than a type error.
        payload = _recv_exact(sock, parse_header(header, RESULT))
        _check_result(payload)
        raise HandshakeError("the server admitted us before the handshake was done")
    return _recv_exact(sock, parse_header(header, expect))


def _check_result(payload: bytes) -> None:
    if payload[:1] != bytes([ADMITTED]):
        reason = payload[1:].decode(errors="replace") or "no reason given"
        raise HandshakeError(f"the server refused us: {reason}")


def client_handshake(sock: socket.socket, ident: HostIdentity, timeout: float = TIMEOUT) -> Peer:
    """Run the handshake on a connected blocking socket; on return the server is proven and
    has admitted us, and the socket is at the first 9P byte. Reads exactly the handshake's
    bytes, so nothing of the 9P stream is consumed."""
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        nonce_c = os.urandom(NONCE)
        sock.sendall(frame(HELLO, nonce_c + _der(ident.cert)))
        payload = _recv_frame(sock, PROVE)
        if len(payload) < NONCE + 2 + SIG:
            raise HandshakeError("PROVE too short")
        nonce_s = payload[:NONCE]
        (length,) = _U16.unpack_from(payload, NONCE)
        if len(payload) != NONCE + 2 + length + SIG:
            raise HandshakeError("PROVE of the wrong size")
        server_cert = check_peer_certificate(payload[NONCE + 2:NONCE + 2 + length], ident.ca_cert)
        fp_c, fp_s = fingerprint(ident.cert), fingerprint(server_cert)
        _verify(server_cert, payload[NONCE + 2 + length:], transcript(b"server", nonce_c, nonce_s, fp_c, fp_s))
        sock.sendall(frame(PROOF, ident.key.sign(transcript(b"client", nonce_c, nonce_s, fp_c, fp_s))))
        _check_result(_recv_frame(sock, RESULT))
        return Peer(common_name(server_cert), ident.cluster, fp_s)
    except TimeoutError:
        raise HandshakeError("the server did not finish the handshake in time") from None
    finally:
        sock.settimeout(old)
