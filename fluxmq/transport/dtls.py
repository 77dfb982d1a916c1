"""DTLS 1.2 with X.509 certificates for the CoAP bridge (`server.coap.dtls`, `.mdtls`), on
pyOpenSSL with memory BIOs (aiocoap's own DTLS is PSK-only).

- Stateless cookie exchange (RFC 6347 4.2.1): a ClientHello from an address without a session is
  answered with a HelloVerifyRequest whose cookie is an HMAC of the address under a secret
  that changes every few minutes; nothing is kept until the client comes back with a valid
  cookie, so spoofed sources cost the server nothing but that answer.
- Per-peer state: one `DTLSSession` (an OpenSSL connection) per address and port, at most
  `max_peers`; a handshake must finish within HANDSHAKE_TIMEOUT, an established session ends
  after `idle_timeout` without traffic (unless it observes, see coap.py).
- Retransmission timers: OpenSSL's DTLS timer (`DTLSv1_get_timeout`/`DTLSv1_handle_timeout`)
  drives the handshake's retransmissions.
- `mdtls`: a client certificate is required and verified against `ca_file`; its identity (subject
  CN, else the first SAN) and SANs go to the authentication hook as a TLS client's do. On `dtls`
  with a `ca_file`, a certificate is asked for and verified if sent.

A handshake that fails (no or a bad certificate, garbage) is counted and its peer logged once;
other sessions carry on. Application data is encrypted as it is queued (`encrypt`), so that
records leave in sequence order through the listener's output.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from fluxmq.config import ConfigError
from fluxmq.transport import tls as _tls

log = logging.getLogger("fluxmq.transport.coap")

HANDSHAKE_TIMEOUT = 10.0
COOKIE_ROTATE = 300.0
MTU = 1400  # largest datagram sent (handshake flights are fragmented to fit)
_HEADER = 13  # DTLS record header length
_HANDSHAKE = 22
_DTLS1_2_VERSION = 0xFEFD  # OpenSSL's DTLS1_2_VERSION (pyOpenSSL does not name it)


def _ssl_shim(section: Any, mutual: bool) -> SimpleNamespace:
    """The section in the shape `tls.build_context` checks (files, key match, cipher names)."""
    auth = "require" if mutual else ("verify_if_given" if section.ca_file else "none")
    return SimpleNamespace(
        cert_file=section.cert_file, key_file=section.key_file, ca_file=section.ca_file,
        client_auth=auth, min_version="TLS1.2", cipher_suites=section.cipher_suites,
        prefer_server_cipher_suites=False, use_identity_as_username=False,
    )  # fmt: skip


def build_context(section: Any, key: str) -> SSL.Context:
    """The pyOpenSSL DTLS server context of `server.coap.dtls` / `.mdtls` at `key`."""
    mutual = key.endswith(".mdtls")
    if mutual and not section.ca_file:
        raise ConfigError(f"{key}.ca_file: required for an mDTLS listener", f"{key}.ca_file")
    # The ssl module's checks name the key for every problem with the files and suites.
    _tls.build_context(_ssl_shim(section, mutual), key)
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    try:
        ctx.set_min_proto_version(_DTLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
        ctx.use_certificate_chain_file(section.cert_file)
        ctx.use_privatekey_file(section.key_file)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise ConfigError(f"{key}.key_file: cannot be used for DTLS ({exc})", f"{key}.key_file")
    if section.cipher_suites:
        names = ":".join(_tls._openssl_name(n) for n in section.cipher_suites)
        try:
            ctx.set_cipher_list(names.encode())
        except SSL.Error:
            raise ConfigError(
                f"{key}.cipher_suites: none of these suites can be used with DTLS",
                f"{key}.cipher_suites",
            ) from None
    if section.ca_file:
        try:
            ctx.load_verify_locations(section.ca_file)
        except SSL.Error:
            raise ConfigError(
                f"{key}.ca_file: {section.ca_file!r} holds no PEM certificate", f"{key}.ca_file"
            ) from None
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if mutual else 0)
        ctx.set_verify(mode, None)
    else:
        ctx.set_verify(SSL.VERIFY_NONE, None)
    return ctx


def check_listener(section: Any, key: str) -> None:
    """Raise ConfigError if the DTLS listener at `key` cannot get a working context."""
    build_context(section, key)


def certificate_identity(cert: x509.Certificate | None) -> tuple[str | None, tuple[str, ...]]:
    """(subject CN, else the first SAN; the SANs as `DNS:name`, `IP:addr`, `email:..`, `URI:..`)"""
    if cert is None:
        return None, ()
    cn = None
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        cn = attr.value if isinstance(attr.value, str) else attr.value.decode()
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        ext = None
    if ext is not None:
        for name in ext:
            if isinstance(name, x509.DNSName):
                sans.append(f"DNS:{name.value}")
            elif isinstance(name, x509.IPAddress):
                sans.append(f"IP:{name.value}")
            elif isinstance(name, x509.RFC822Name):
                sans.append(f"email:{name.value}")
            elif isinstance(name, x509.UniformResourceIdentifier):
                sans.append(f"URI:{name.value}")
    identity = cn or (sans[0].split(":", 1)[1] if sans else None)
    return identity, tuple(sans)


def split_records(data: bytes) -> list[bytes]:
    """DTLS records of a byte string (a trailing partial record is kept whole)."""
    out = []
    pos, n = 0, len(data)
    while pos < n:
        end = pos + _HEADER + int.from_bytes(data[pos + 11 : pos + 13], "big")
        out.append(data[pos:end])
        pos = end
    return out


class DTLSSession:
    """One client's DTLS session (an OpenSSL connection over memory BIOs)."""

    __slots__ = ("addr", "conn", "dtls", "established", "key", "peer", "started", "timer")

    def __init__(self, dtls: DTLS, conn: SSL.Connection, addr, now: float) -> None:
        self.dtls = dtls
        self.conn = conn
        self.addr = addr
        self.key = addr[:2]
        self.established = False
        self.peer = None  # the CoAP Peer, once established
        self.started = now
        self.timer = None

    def feed(self, data: bytes) -> None:
        conn = self.conn
        try:
            conn.bio_write(data)
        except SSL.Error:
            return
        if not self.established:
            self._handshake()
            if not self.established:
                return
        listener = self.dtls.listener
        while True:
            try:
                plain = conn.recv(65535)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self.flush()
                self.dtls.end(self)
                return
            except SSL.Error as exc:
                listener.garbage += 1
                listener.problem(self.addr[0], f"DTLS record refused ({_reason(exc)})")
                break
            if self.peer is not None and plain:
                listener.message(self.peer, plain)
        self.flush()

    def _handshake(self) -> None:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            self.flush()
            self._arm()
            return
        except SSL.Error as exc:
            self.flush()  # the alert
            self.dtls.failed(self, _reason(exc))
            return
        self.flush()
        self._cancel()
        self.established = True
        self.dtls.established(self)

    def _arm(self) -> None:
        self._cancel()
        timeout = self.conn.DTLSv1_get_timeout()
        if timeout is not None:
            self.timer = self.dtls.listener.loop.call_later(max(timeout, 0.001), self._on_timer)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        if self.established:
            return
        try:
            self.conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self.dtls.failed(self, _reason(exc))
            return
        self.flush()
        self._arm()

    def flush(self) -> None:
        """Send what OpenSSL wrote (handshake flights, alerts) now, records packed into
        datagrams of at most MTU bytes."""
        out = b""
        conn = self.conn
        while True:
            try:
                out += conn.bio_read(65536)
            except SSL.WantReadError:
                break
            except SSL.Error:
                break
        if not out:
            return
        transport = self.dtls.listener.transport
        if transport is None:
            return
        datagram = b""
        for record in split_records(out):
            if datagram and len(datagram) + len(record) > MTU:
                transport.sendto(datagram, self.addr)
                datagram = b""
            datagram += record
        if datagram:
            transport.sendto(datagram, self.addr)

    def encrypt(self, data: bytes) -> bytes:
        """`data` as one application-data record (b"" if the session cannot send)."""
        conn = self.conn
        try:
            conn.send(data)
            out = conn.bio_read(65536 + 1024)
        except SSL.Error:
            return b""
        return out

    def close(self) -> None:
        """Send close_notify and forget the session."""
        self._cancel()
        if self.established:
            try:
                self.conn.shutdown()
            except SSL.Error:
                pass
            self.flush()
        self.dtls.end(self)


def _reason(exc: Exception) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        parts = [e[2] for e in exc.args[0] if len(e) > 2]
        if parts:
            return "; ".join(parts)
    return str(exc) or type(exc).__name__


class DTLS:
    """The DTLS side of one CoAP listener: cookies, sessions, the context (reloaded on SIGHUP)."""

    def __init__(self, section: Any, key: str) -> None:
        self.section = section
        self.key = key
        self.mutual = key.endswith(".mdtls")
        self.context = self._context()
        self.listener = None  # the CoAPListener, which sets itself here
        self.sessions: dict = {}
        self.secret = os.urandom(32)
        self.old_secret = self.secret
        self.rotated = time.monotonic()
        self.failures = 0  # failed handshakes
        self.cookies_sent = 0

    def _context(self) -> SSL.Context:
        ctx = build_context(self.section, self.key)
        ctx.set_cookie_generate_callback(self._cookie)
        ctx.set_cookie_verify_callback(self._verify_cookie)
        return ctx

    def reload(self) -> bool:
        """SIGHUP: new sessions use the files as they are now (ConfigError: unchanged)."""
        self.context = self._context()
        return True

    # -- cookies -----------------------------------------------------------------------------------

    def _mac(self, secret: bytes, addr) -> bytes:
        return hmac.new(secret, f"{addr[0]}|{addr[1]}".encode(), hashlib.sha256).digest()[:16]

    def _cookie(self, conn: SSL.Connection) -> bytes:
        now = time.monotonic()
        if now - self.rotated > COOKIE_ROTATE:
            self.old_secret, self.secret = self.secret, os.urandom(32)
            self.rotated = now
        self.cookies_sent += 1
        return self._mac(self.secret, conn.get_app_data())

    def _verify_cookie(self, conn: SSL.Connection, cookie: bytes) -> bool:
        addr = conn.get_app_data()
        return hmac.compare_digest(cookie, self._mac(self.secret, addr)) or hmac.compare_digest(
            cookie, self._mac(self.old_secret, addr)
        )

    # -- datagrams ---------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr) -> None:
        listener = self.listener
        key = addr[:2]
        session = self.sessions.get(key)
        hello = (
            len(data) > _HEADER + 12
            and data[0] == _HANDSHAKE
            and data[3:5] == b"\x00\x00"  # epoch 0
            and data[_HEADER] == 1  # ClientHello
        )
        if session is not None:
            if hello and session.established:
                # The client started over from the same port: the old session is gone.
                self.end(session)
            else:
                session.feed(data)
                return
        if not hello:
            listener.garbage += 1
            listener.problem(addr[0], "datagram that is not a DTLS ClientHello", size=len(data))
            return
        self._hello(data, addr)

    def _hello(self, data: bytes, addr) -> None:
        listener = self.listener
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(addr[:2])
        conn.set_accept_state()
        conn.set_ciphertext_mtu(MTU)
        try:
            conn.bio_write(data)
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            # No valid cookie: answer with a HelloVerifyRequest and keep nothing.
            try:
                out = conn.bio_read(65536)
            except SSL.Error:
                out = b""
            if out and listener.transport is not None:
                listener.transport.sendto(out, addr)
            return
        except SSL.Error as exc:
            listener.garbage += 1
            listener.problem(addr[0], f"DTLS ClientHello refused ({_reason(exc)})")
            return
        now = listener.loop.time()
        if len(self.sessions) >= listener.max_peers:
            self.sweep(now)
            listener._sweep(now)
            if len(self.sessions) >= listener.max_peers:
                listener.refused += 1
                listener.problem(addr[0], "DTLS session refused: server.coap max_peers reached")
                return
        session = DTLSSession(self, conn, addr, now)
        self.sessions[session.key] = session
        session._handshake()

    # -- session events ----------------------------------------------------------------------------

    def established(self, session: DTLSSession) -> None:
        from fluxmq.transport.coap import Peer  # circular at import time

        listener = self.listener
        peer = Peer(session.addr, listener.loop.time())
        cert = session.conn.get_peer_certificate(as_cryptography=True)
        peer.identity, peer.sans = certificate_identity(cert)
        peer.username = peer.identity
        peer.dtls = session
        session.peer = peer
        old = listener.peers.get(peer.key)
        if old is not None:
            listener.drop_peer(old)
        listener.peers[peer.key] = peer
        log.debug(
            "DTLS session established",
            extra={"listener": listener.name, "client": peer.client_id,
                   "identity": peer.identity, "cipher": session.conn.get_cipher_name()},
        )  # fmt: skip

    def failed(self, session: DTLSSession, reason: str) -> None:
        self.failures += 1
        self.listener.problem(session.addr[0], f"DTLS handshake failed ({reason})")
        self.end(session)

    def end(self, session: DTLSSession) -> None:
        session._cancel()
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        peer = session.peer
        if peer is not None and not peer.gone:
            self.listener.drop_peer(peer)

    def sweep(self, now: float) -> None:
        """Handshakes that did not finish in time are dropped."""
        for session in list(self.sessions.values()):
            if not session.established and now - session.started > HANDSHAKE_TIMEOUT:
                self.failures += 1
                self.listener.problem(session.addr[0], "DTLS handshake timed out")
                self.end(session)

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
        self.sessions.clear()
