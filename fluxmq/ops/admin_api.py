"""The admin REST API (`server.api.addr`, off by default): JSON over HTTP, every request with
`Authorization: Bearer <server.api.token>` (401 otherwise), except the OpenAPI document.

    GET    /api/v1/clients?prefix=&limit=&after=   clients (sessions), by client id
    GET    /api/v1/clients/{id}                     one client (404 if unknown)
    DELETE /api/v1/clients/{id}                     disconnect it (MQTT 5: DISCONNECT 0x98)
    GET    /api/v1/clients/{id}/subscriptions       its subscriptions
    GET    /api/v1/retained?filter=&limit=          retained messages matching a filter
    DELETE /api/v1/retained/{topic}                 clear one retained message
    GET    /api/v1/stats                            counters and gauges
    POST   /api/v1/reload                           re-read the configuration (as SIGHUP)
    ...    /api/v1/queues...                        durable queues (fluxmq.ops.queue_api)
    GET    /api/v1/openapi.json                     the OpenAPI 3 document of all this

Path parameters are percent-encoded (`/api/v1/clients/a%2Fb` is client `a/b`; a topic may
keep its slashes: `/api/v1/retained/sensors/1/temp`).
"""

from __future__ import annotations

import base64
import hmac
import time
from urllib.parse import parse_qs, unquote

from fluxmq import __version__
from fluxmq._speedups import codec
from fluxmq._speedups.message import Message
from fluxmq.ops import queue_api
from fluxmq.transport.http import Request, Response, error_response, json_response

PREFIX = "/api/v1/"
_PROTOCOLS = {3: "mqtt3.1", 4: "mqtt3.1.1", 5: "mqtt5"}
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="fluxmq"'}


def _client(session) -> dict:
    o = session.outlet
    out = {
        "client_id": session.client_id,
        "connected": o is not None,
        "subscriptions": len(session.subscriptions),
        "inflight": session.inflight_count,
        "queued": session.queued_count,
        "dropped": session.dropped,
        "expiry_interval": session.expiry_interval,
        "disconnected_at": session.disconnected_at or None,
    }
    if o is not None:
        listener = getattr(o, "listener", None)
        out.update(
            username=getattr(o, "username", None),
            remote_addr=getattr(o, "remote", None),
            protocol=_PROTOCOLS.get(getattr(o, "version", 0), "other"),
            listener=getattr(listener, "name", None),
            keepalive=getattr(o, "keepalive", None),
        )
    return out


def _sub(sub) -> dict:
    return {
        "topic_filter": sub.full_filter,
        "qos": sub.qos,
        "share_group": sub.share_group,
        "no_local": bool(sub.no_local),
        "retain_as_published": bool(sub.retain_as_published),
        "retain_handling": sub.retain_handling,
        "subscription_id": sub.identifier,
    }


def _int(q: dict, name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name, [None])[0]
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ValueError(f"{name}: expected an integer from {lo} to {hi}")
    return int(raw)


class AdminAPI:
    """The request handler of the admin listener; `node` is the running `fluxmq.app.Node`."""

    def __init__(self, node) -> None:
        self.node = node

    def _authorized(self, req: Request) -> bool:
        token = self.node.cfg.server.api.token
        header = req.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return (
            bool(token)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), token.encode())
        )

    def __call__(self, req: Request) -> Response:
        path = req.path
        if path == PREFIX + "openapi.json":
            if req.method not in ("GET", "HEAD"):
                return error_response(405, "method not allowed: use GET", {"Allow": "GET"})
            return json_response(200, OPENAPI)
        if not path.startswith(PREFIX):
            return error_response(404, f"not found: {path}")
        if not self._authorized(req):
            return error_response(401, "missing or wrong bearer token", _UNAUTHORIZED)
        try:
            return self._route(req, path[len(PREFIX) :], parse_qs(req.query))
        except ValueError as exc:
            return error_response(400, str(exc))

    def _route(self, req: Request, rest: str, q: dict) -> Response:
        m = req.method
        parts = rest.split("/")
        if rest == "clients":
            return self._only(m, "GET") or self.clients(q)
        if parts[0] == "clients" and len(parts) in (2, 3) and parts[1]:
            cid = unquote(parts[1])
            if len(parts) == 3:
                if parts[2] != "subscriptions":
                    return error_response(404, f"not found: {req.path}")
                return self._only(m, "GET") or self.subscriptions(cid)
            if m == "DELETE":
                return self.kick(cid)
            return self._only(m, "GET", "DELETE") or self.client(cid)
        if rest == "retained":
            return self._only(m, "GET") or self.retained(q)
        if parts[0] == "retained" and len(parts) > 1:
            return self._only(m, "DELETE") or self.clear_retained(unquote(rest[len("retained/") :]))
        if rest == "stats":
            return self._only(m, "GET") or self.stats()
        if rest == "reload":
            return self._only(m, "POST") or self.reload()
        if parts[0] == "queues":  # durable queues: fluxmq.ops.queue_api
            return queue_api.route(self.node, req, parts[1:], q)
        return error_response(404, f"not found: {req.path}")

    @staticmethod
    def _only(method: str, *allowed: str) -> Response | None:
        ok = (*allowed, "HEAD") if "GET" in allowed else allowed
        if method in ok:
            return None
        return error_response(
            405, f"method not allowed: use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)}
        )

    # -- clients --------------------------------------------------------------------------------

    def clients(self, q: dict) -> Response:
        prefix = q.get("prefix", [""])[0]
        after = q.get("after", [""])[0]
        limit = _int(q, "limit", 100, 1, 1000)
        ids = sorted(c for c in self.node.broker.sessions if c.startswith(prefix))
        total = len(ids)
        if after:
            import bisect

            ids = ids[bisect.bisect_right(ids, after) :]
        page = ids[:limit]
        sessions = self.node.broker.sessions
        return json_response(
            200,
            {
                "clients": [_client(sessions[c]) for c in page],
                "total": total,
                "next": page[-1] if len(ids) > limit else None,
            },
        )

    def _session(self, cid: str):
        return self.node.broker.sessions.get(cid)

    def client(self, cid: str) -> Response:
        s = self._session(cid)
        if s is None:
            return error_response(404, f"unknown client: {cid}")
        return json_response(200, _client(s))

    def subscriptions(self, cid: str) -> Response:
        s = self._session(cid)
        if s is None:
            return error_response(404, f"unknown client: {cid}")
        subs = sorted(s.subscriptions.values(), key=lambda x: x.full_filter)
        return json_response(200, {"client_id": cid, "subscriptions": [_sub(x) for x in subs]})

    def kick(self, cid: str) -> Response:
        s = self._session(cid)
        if s is None:
            return error_response(404, f"unknown client: {cid}")
        o = s.outlet
        if o is None or not hasattr(o, "kick"):
            return error_response(409, f"client not connected: {cid}")
        o.kick(0x98, "disconnected by an administrator")
        return json_response(200, {"status": "ok", "client_id": cid, "disconnected": True})

    # -- retained -------------------------------------------------------------------------------

    def retained(self, q: dict) -> Response:
        flt = q.get("filter", ["#"])[0]
        if not codec.valid_topic_filter(flt):
            raise ValueError(f"filter: not a valid topic filter: {flt}")
        limit = _int(q, "limit", 100, 1, 10000)
        msgs = sorted(self.node.broker.retained.match(flt), key=lambda m: m.topic)
        out = [
            {
                "topic": m.topic,
                "qos": m.qos,
                "payload_size": m.payload_size,
                "payload": base64.b64encode(m.payload).decode(),
                "content_type": m.content_type,
            }
            for m in msgs[:limit]
        ]
        return json_response(200, {"retained": out, "total": len(msgs)})

    def clear_retained(self, topic: str) -> Response:
        store = self.node.broker.retained
        if not topic or store.get(topic) is None:
            return error_response(404, f"no retained message on {topic}")
        store.set(Message(topic, b"", 0, True))
        return json_response(200, {"status": "ok", "topic": topic, "cleared": True})

    # -- stats and reload -----------------------------------------------------------------------

    def stats(self) -> Response:
        node = self.node
        b = node.broker
        connected, total = b.client_count()
        c = b.counters
        out = {
            "version": __version__,
            "node_id": node.cfg.cluster.node_id,
            "uptime_seconds": int(time.time() - b.stats.started_at),
            "clients": {"connected": connected, "sessions": total},
            "subscriptions": b.dispatcher.subscription_count,
            "retained": b.retained.count,
            "counters": c.as_dict(),
            "publish_by_qos": c.by_qos(),
        }
        if node.hooks is not None:
            st = node.hooks.stats
            out["auth"] = {
                "successes": st.successes,
                "failures": dict(st.failures),
                "publish_denied": st.publish_denied,
                "subscribe_denied": st.subscribe_denied,
            }
        if node.webhooks is not None:
            out["webhooks"] = {
                e.name: {
                    "delivered": e.stats.delivered,
                    "failed": e.stats.failed,
                    "dropped": dict(e.stats.dropped),
                    "queued": len(e.queue),
                    "circuit": e.breaker.state,
                }
                for e in node.webhooks.endpoints
            }
        return json_response(200, out)

    def reload(self) -> Response:
        ok, message = self.node.reload()
        if ok:
            return json_response(200, {"status": "ok", "message": message})
        return error_response(400, message)


def _op(summary: str, responses: dict, params: list | None = None, tag: str = "") -> dict:
    op: dict = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if tag:
        op["tags"] = [tag]
    return op


_JSON = {"content": {"application/json": {"schema": {"type": "object"}}}}
_OK = {"200": {"description": "OK", **_JSON}, "401": {"description": "Missing or wrong token"}}
_OK404 = {**_OK, "404": {"description": "Unknown client or topic"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "Client identifier (percent-encoded)"}  # fmt: skip


def _q(name: str, kind: str, doc: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind},
            "description": doc}  # fmt: skip


OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "FluxMQ admin API", "version": __version__},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/clients": {
            "get": _op("List clients (sessions), sorted by client id", {**_OK, "400": {"description": "Bad query"}}, [
                _q("prefix", "string", "Only client ids starting with this"),
                _q("limit", "integer", "Page size, 1 to 1000 (default 100)"),
                _q("after", "string", "Cursor: the `next` of the previous page"),
            ], "clients"),
        },
        "/api/v1/clients/{id}": {
            "get": _op("One client", _OK404, [_ID], "clients"),
            "delete": _op("Disconnect a client (MQTT 5: DISCONNECT 0x98)",
                          {**_OK404, "409": {"description": "Not connected"}}, [_ID], "clients"),
        },
        "/api/v1/clients/{id}/subscriptions": {
            "get": _op("A client's subscriptions", _OK404, [_ID], "clients"),
        },
        "/api/v1/retained": {
            "get": _op("Retained messages matching a filter", _OK, [
                _q("filter", "string", "MQTT topic filter (default #)"),
                _q("limit", "integer", "At most this many, 1 to 10000 (default 100)"),
            ], "retained"),
        },
        "/api/v1/retained/{topic}": {
            "delete": _op("Clear one retained message", _OK404, [
                {"name": "topic", "in": "path", "required": True, "schema": {"type": "string"}},
            ], "retained"),
        },
        "/api/v1/stats": {"get": _op("Counters and gauges", _OK, tag="broker")},
        "/api/v1/reload": {
            "post": _op("Re-read the configuration (as SIGHUP)",
                        {**_OK, "400": {"description": "Invalid configuration (nothing changed)"}},
                        tag="broker"),
        },
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                         "responses": {"200": {"description": "OK"}}}},
    },
}  # fmt: skip
OPENAPI["paths"].update(queue_api.OPENAPI_PATHS)
