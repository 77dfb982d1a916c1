"""TLS for every listener (MQTT over TCP and WebSocket, the HTTP bridge): server contexts from the
inline `cert_file`, `key_file`, `ca_file`, `client_auth`, `min_version`, `cipher_suites`,
`prefer_server_cipher_suites` settings, their reload on SIGHUP, and the client certificate's
identity.

A listener does not hand its context to `create_server`: its protocol factory wraps each new
connection in uvloop's `SSLProtocol` with `ServerTLS.context` as it is at that moment. So a reload
(`ServerTLS.reload()`) swaps in a complete new context (certificate, key and CAs) for the
connections that come after it, while established connections keep the session they have.

Every problem is a `ConfigError` naming the key, raised when the configuration is loaded (so
`fluxmq serve` exits with code 2 and `fluxmq check-config` reports it) and again at reload.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
from typing import Any

from fluxmq.config import ConfigError

log = logging.getLogger("fluxmq.transport")

__all__ = [
    "ServerTLS",
    "build_context",
    "check_listener",
    "cipher_problem",
    "client_auth_mode",
    "peer_identity",
]

# IANA (and Go) names of the TLS 1.2 suites -> OpenSSL names.
IANA_TO_OPENSSL = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
}
TLS13_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
_available: frozenset[str] | None = None


def _available_ciphers() -> frozenset[str]:
    """OpenSSL names of the TLS 1.2 suites this OpenSSL build can offer."""
    global _available
    if _available is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers("ALL")
        _available = frozenset(
            c["name"] for c in ctx.get_ciphers() if c["name"] not in TLS13_SUITES
        )
    return _available


def _openssl_name(name: str) -> str:
    return IANA_TO_OPENSSL.get(name.upper(), name)


def cipher_problem(name: str) -> str | None:
    """None if `name` is a TLS 1.2 cipher suite this build offers, else what is wrong with it."""
    if name.upper() in TLS13_SUITES:
        return "a TLS 1.3 suite: those are always enabled and cannot be listed"
    if _openssl_name(name) not in _available_ciphers():
        return "unknown cipher suite (or not available in this OpenSSL build)"
    return None


def client_auth_mode(section: Any) -> str:
    """The effective `client_auth`: `""` means `require` when `ca_file` is set, else `none`."""
    if section.client_auth:
        return section.client_auth
    return "require" if section.ca_file else "none"


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def _readable(path: str, key: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc.strerror or exc}", key) from None


def _load_chain(ctx: ssl.SSLContext, section: Any, key: str) -> None:
    cert_key, key_key = f"{key}.cert_file", f"{key}.key_file"
    for name, value in ((cert_key, section.cert_file), (key_key, section.key_file)):
        if not value:
            raise ConfigError(f"{name}: required when {key}.addr is set", name)
        _readable(value, name)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=section.cert_file)
    except ssl.SSLError:
        raise ConfigError(
            f"{cert_key}: {section.cert_file!r} holds no PEM certificate", cert_key
        ) from None
    try:
        ctx.load_cert_chain(section.cert_file, section.key_file, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            f"{key_key}: {section.key_file!r} is encrypted; give the key without a passphrase",
            key_key,
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(
                f"{key_key}: {section.key_file!r} does not match the certificate in {cert_key}",
                key_key,
            ) from None
        raise ConfigError(
            f"{key_key}: {section.key_file!r} holds no usable PEM private key ({exc.reason})",
            key_key,
        ) from None


# -- client_auth `request` and `require_any`: ask for a certificate but accept any ---------------
#
# The ssl module verifies every client certificate it asks for. Accepting one without checking
# it needs OpenSSL's verify callback, which Python does not expose: it is set here through the
# context's SSL_CTX (the first field after the object header of CPython's SSLContext object),
# after checking on the live context that the pointer is the one the ssl module itself uses.

_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_accept_any = _VERIFY_CB(lambda ok, store: 1)
_libssl: Any = None


def _ssl_lib() -> Any:
    global _libssl
    if _libssl is None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # its dependencies (libssl) are searched too
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        _libssl = lib
    return _libssl


def _accept_any_certificate(ctx: ssl.SSLContext, require: bool, key: str) -> None:
    lib = _ssl_lib()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    ok = bool(ptr)
    if ok:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ok = lib.SSL_CTX_get_verify_mode(ptr) == _SSL_VERIFY_PEER
        ctx.verify_mode = ssl.CERT_NONE
        ok = ok and lib.SSL_CTX_get_verify_mode(ptr) == 0
    if not ok:
        raise ConfigError(
            f"{key}.client_auth: request and require_any are not available with this Python "
            "build; use verify_if_given or require with a ca_file",
            f"{key}.client_auth",
        )
    mode = _SSL_VERIFY_PEER | (_SSL_VERIFY_FAIL_IF_NO_PEER_CERT if require else 0)
    lib.SSL_CTX_set_verify(ptr, mode, _accept_any)


def build_context(section: Any, key: str) -> ssl.SSLContext:
    """The server SSLContext of a TLS listener section (`server.tcp.tls`, ...) at `key`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if section.min_version == "TLS1.3" else ssl.TLSVersion.TLSv1_2
    )
    _load_chain(ctx, section, key)
    if section.cipher_suites:
        names = ":".join(_openssl_name(n) for n in section.cipher_suites)
        try:
            ctx.set_ciphers(names)
        except ssl.SSLError:
            raise ConfigError(
                f"{key}.cipher_suites: none of these suites can be used", f"{key}.cipher_suites"
            ) from None
    if section.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    mode = client_auth_mode(section)
    ca_key = f"{key}.ca_file"
    if key.endswith(".mtls") and not section.ca_file:
        raise ConfigError(f"{ca_key}: required for an mTLS listener", ca_key)
    if mode in ("require", "verify_if_given") and not section.ca_file:
        raise ConfigError(f"{ca_key}: required with client_auth: {mode}", ca_key)
    if section.ca_file:
        _readable(section.ca_file, ca_key)
        try:
            ctx.load_verify_locations(cafile=section.ca_file)
        except ssl.SSLError:
            raise ConfigError(
                f"{ca_key}: {section.ca_file!r} holds no PEM certificate", ca_key
            ) from None
    if mode == "require":
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif mode == "verify_if_given":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif mode in ("request", "require_any"):
        _accept_any_certificate(ctx, mode == "require_any", key)
    return ctx


def check_listener(section: Any, key: str) -> None:
    """Raise ConfigError if the TLS listener at `key` cannot get a working context."""
    build_context(section, key)


class ServerTLS:
    """The current server context of one listener; `reload()` re-reads its files."""

    def __init__(self, section: Any, key: str) -> None:
        self.section = section
        self.key = key
        self.context = build_context(section, key)
        self.client_auth = client_auth_mode(section)
        self.use_identity_as_username = section.use_identity_as_username
        self.loaded = self._stamp()

    def _stamp(self) -> tuple:
        out = []
        for path in (self.section.cert_file, self.section.key_file, self.section.ca_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
        return tuple(out)

    def reload(self) -> bool:
        """Build a new context from the files (ConfigError if they are now bad: the current
        context stays). Returns True: new connections use the new context."""
        self.context = build_context(self.section, self.key)
        self.loaded = self._stamp()
        return True


def peer_identity(transport: Any) -> tuple[str | None, tuple[str, ...]]:
    """The client certificate's identity (subject CN, else its first SAN) and its SANs
    (`DNS:name`, `IP:addr`, `URI:...`, `email:...`), or `(None, ())` without one."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None, ()
    cn = None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                cn = value
    sans = tuple(
        f"{'IP' if kind == 'IP Address' else kind}:{value}"
        for kind, value in cert.get("subjectAltName", ())
    )
    identity = cn or (sans[0].split(":", 1)[1] if sans else None)
    return identity, sans
