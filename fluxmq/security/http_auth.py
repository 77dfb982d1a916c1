"""The HTTP authentication callout (`auth.http.*`).

For each client to be checked, the broker POSTs JSON to `auth.http.url`:

    {"client_id": "c1", "username": "alice", "password": "secret", "cert_identity": null,
     "cert_sans": [], "remote_addr": "192.0.2.7:50312", "protocol": "mqtt5", "listener": "tcp"}

(`password` is text when it is UTF-8, else `password_base64`.) The answer:

- 2xx with `{"result": "allow"}`: accepted; an optional `"acl": [{"access": "read", "topic":
  "a/#"}, ...]` (access read, write, readwrite or deny; `%u`/`%c` replaced) then replaces the
  ACL file's rules for that client.
- 2xx with `{"result": "deny"}`, or 401/403: refused as bad credentials (MQTT 5 0x86, 3.1.1
  0x04).
- Anything else (another status, a body without a result, a timeout, no connection): a
  failure: refused as not authorised (0x87 / 0x05) with `on_error: deny`, let in with
  `on_error: allow`.

Answers (not failures) are cached for `cache_ttl` per client id, username, password,
certificate identity and source IP.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any

import orjson

from fluxmq.transport.http_client import HTTPClient, HTTPError

log = logging.getLogger("fluxmq.security")

CACHE_MAX = 10000
POOL = 8  # connections kept to the callout


def _ip(remote: str | None) -> str:
    if not remote:
        return ""
    if remote.startswith("["):
        return remote[1 : remote.find("]")]
    return remote.rsplit(":", 1)[0] if remote.count(":") == 1 else remote


class HTTPAuth:
    def __init__(self, cfg) -> None:
        self.url = cfg.url
        self.timeout = cfg.timeout
        self.ttl = cfg.cache_ttl
        self.allow_on_error = cfg.on_error == "allow"
        self.headers = dict(cfg.headers)
        self.cache: dict[tuple, tuple[float, bool, Any]] = {}
        self.idle: list[HTTPClient] = []
        self.calls = 0
        self.failures = 0

    def _key(self, info) -> tuple:
        pw = hashlib.sha256(info.password or b"").digest() if info.password is not None else None
        return (info.client_id, info.username, pw, info.cert_identity, _ip(info.remote))

    async def check(self, info) -> tuple[bool, Any, str]:
        """(allowed, acl items or None, why) for a connecting client."""
        key = self._key(info)
        now = time.monotonic()
        hit = self.cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2], "cached"
        body: dict[str, Any] = {
            "client_id": info.client_id,
            "username": info.username,
            "cert_identity": info.cert_identity,
            "cert_sans": list(info.cert_sans),
            "remote_addr": info.remote,
            "protocol": info.protocol,
            "listener": info.listener,
        }
        if info.password is not None:
            try:
                body["password"] = info.password.decode("utf-8")
            except UnicodeDecodeError:
                body["password_base64"] = base64.b64encode(info.password).decode()
        else:
            body["password"] = None
        self.calls += 1
        try:
            status, answer = await self._post(orjson.dumps(body))
            allowed, acl, why = self._decide(status, answer)
        except (TimeoutError, HTTPError, ValueError, OSError) as exc:
            self.failures += 1
            why = "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            log.warning(
                "HTTP authentication callout failed: %s",
                why,
                extra={"client_id": info.client_id, "url": self.url},
            )
            return self.allow_on_error, None, f"callout failed ({why})"
        if self.ttl > 0:
            if len(self.cache) >= CACHE_MAX:
                self.cache.clear()
            self.cache[key] = (now + self.ttl, allowed, acl)
        return allowed, acl, why

    @staticmethod
    def _decide(status: int, answer: bytes) -> tuple[bool, Any, str]:
        if status in (401, 403):
            return False, None, "denied"
        if not 200 <= status < 300:
            raise ValueError(f"HTTP {status}")
        try:
            obj = orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise ValueError("answer is not JSON") from None
        result = obj.get("result") if isinstance(obj, dict) else None
        if result == "deny":
            return False, None, "denied"
        if result != "allow":
            raise ValueError('answer has no "result": "allow" or "deny"')
        acl = obj.get("acl")
        if acl is not None and not isinstance(acl, list):
            raise ValueError('"acl" must be a list')
        return True, acl, "allowed"

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        client = self.idle.pop() if self.idle else HTTPClient(self.url, self.headers)
        try:
            result = await client.post(body, self.timeout)
        except BaseException:
            client.close()
            raise
        if len(self.idle) < POOL:
            self.idle.append(client)
        else:
            client.close()
        return result

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


__all__ = ["HTTPAuth"]
