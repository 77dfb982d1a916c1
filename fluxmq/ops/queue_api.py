"""The durable-queue endpoints of the admin API (mounted by fluxmq.ops.admin_api under
`/api/v1/queues`, with its bearer token):

    GET    /api/v1/queues                                  queues with depth, size, lag per group
    POST   /api/v1/queues                                  create: {"name": ..., settings...}
    GET    /api/v1/queues/{name}                           stats per queue, partition and group
    DELETE /api/v1/queues/{name}                           delete it and its files
    POST   /api/v1/queues/{name}/purge                     remove every message
    GET    /api/v1/queues/{name}/messages?partition=&offset=&limit=
                                                           read messages (the DLQ, or any queue)
    POST   /api/v1/queues/{name}/replay                    append dead letters to their queues:
                                                           {"partition", "offset", "limit", "to"}
    POST   /api/v1/queues/{name}/groups/{group}/seek       {"offset": N} or {"time": RFC 3339},
                                                           optional "partition"
    DELETE /api/v1/queues/{name}/groups/{group}            delete a consumer group
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson

from fluxmq.config import ConfigError
from fluxmq.queue.manager import parse_cursor
from fluxmq.transport.http import Response, error_response, json_response


def _int(q: dict, name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name, [None])[0]
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ValueError(f"{name}: expected an integer from {lo} to {hi}")
    return int(raw)


def _body(req) -> dict:
    if not req.body:
        return {}
    try:
        data = orjson.loads(req.body)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"the body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _method(method: str, *allowed: str) -> Response | None:
    ok = (*allowed, "HEAD") if "GET" in allowed else allowed
    if method in ok:
        return None
    return error_response(
        405, f"method not allowed: use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)}
    )


def route(node, req, parts: list[str], q: dict) -> Response:
    """`parts`: the path after /api/v1/queues, split at /. Raises ValueError for a 400."""
    mgr = node.queues
    if mgr is None:
        return error_response(404, "durable queues are not available")
    m = req.method
    if not parts or parts == [""]:
        if m == "POST":
            return _create(mgr, _body(req))
        return _method(m, "GET", "POST") or json_response(200, {"queues": mgr.list()})
    name = unquote(parts[0])
    queue = mgr.get(name)
    if queue is None:
        return error_response(404, f"no queue named {name!r}")
    rest = parts[1:]
    if not rest:
        if m == "DELETE":
            mgr.delete(name)
            return json_response(200, {"status": "ok", "queue": name, "deleted": True})
        return _method(m, "GET", "DELETE") or json_response(200, queue.info())
    if rest == ["purge"]:
        return _method(m, "POST") or json_response(
            200, {"status": "ok", "queue": name, "purged": mgr.purge(name)}
        )
    if rest == ["messages"]:
        if bad := _method(m, "GET"):
            return bad
        part = _int(q, "partition", 0, 0, 1023)
        offset = _int(q, "offset", 0, 0, 2**62)
        limit = _int(q, "limit", 100, 1, 10000)
        msgs = mgr.read(name, part, offset, limit)
        nxt = msgs[-1]["offset"] + 1 if msgs else None
        return json_response(200, {"queue": name, "messages": msgs, "next_offset": nxt})
    if rest == ["replay"]:
        if bad := _method(m, "POST"):
            return bad
        b = _body(req)
        to = b.get("to")
        if to is not None and mgr.get(to) is None:
            return error_response(404, f"no queue named {to!r}")
        r = mgr.replay(name, b.get("partition"), int(b.get("offset", 0)),
                       int(b.get("limit", 1000)), to)  # fmt: skip
        return json_response(200, {"status": "ok", "queue": name, **r})
    if len(rest) >= 2 and rest[0] == "groups":
        group = unquote(rest[1])
        if group not in queue.groups:
            return error_response(404, f"queue {name!r} has no consumer group {group!r}")
        if len(rest) == 2:
            if bad := _method(m, "DELETE"):
                return bad
            mgr.delete_group(name, group)
            return json_response(200, {"status": "ok", "group": group, "deleted": True})
        if rest[2:] == ["seek"]:
            if bad := _method(m, "POST"):
                return bad
            return _seek(mgr, name, group, _body(req))
    return error_response(404, f"not found: {req.path}")


def _create(mgr, data: dict) -> Response:
    name = data.pop("name", None)
    if not isinstance(name, str):
        raise ValueError("name: required (a string)")
    if mgr.get(name) is not None:
        return error_response(409, f"queue {name!r} exists")
    try:
        q = mgr.create(name, data)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return json_response(201, q.info())


def _seek(mgr, name: str, group: str, b: dict) -> Response:
    partition = b.get("partition")
    if partition is not None and not isinstance(partition, int):
        raise ValueError("partition: expected an integer")
    if "offset" in b:
        if not isinstance(b["offset"], int) or b["offset"] < 0:
            raise ValueError("offset: expected an integer >= 0")
        moved = mgr.seek(name, group, partition, offset=b["offset"])
    elif "time" in b:
        ts = parse_cursor(str(b["time"]))
        if not isinstance(ts, float):
            raise ValueError("time: expected an RFC 3339 time")
        moved = mgr.seek(name, group, partition, ts=ts)
    else:
        raise ValueError("give offset or time")
    return json_response(200, {"status": "ok", "group": group,
                               "partitions": {str(k): v for k, v in moved.items()}})  # fmt: skip


def _op(summary: str, method_doc: dict | None = None) -> dict:
    op = {"summary": summary, "tags": ["queues"],
          "responses": {"200": {"description": "OK"}, "401": {"description": "Missing or wrong token"},
                        "404": {"description": "Unknown queue or group"}}}  # fmt: skip
    if method_doc:
        op.update(method_doc)
    return op


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_GROUP = {"name": "group", "in": "path", "required": True, "schema": {"type": "string"}}
_JSON_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}

OPENAPI_PATHS = {
    "/api/v1/queues": {
        "get": _op("Durable queues: depth, size, oldest message, lag per group"),
        "post": _op("Create a queue: name and any settings of a `queues` item", _JSON_BODY),
    },
    "/api/v1/queues/{name}": {
        "get": _op("A queue's stats per partition and group", {"parameters": [_NAME]}),
        "delete": _op("Delete a queue and its files", {"parameters": [_NAME]}),
    },
    "/api/v1/queues/{name}/purge": {
        "post": _op("Remove every message of a queue", {"parameters": [_NAME]}),
    },
    "/api/v1/queues/{name}/messages": {
        "get": _op("Read messages (partition, offset, limit)", {"parameters": [_NAME]}),
    },
    "/api/v1/queues/{name}/replay": {
        "post": _op("Append dead letters to the queues they came from (or `to`)",
                    {"parameters": [_NAME], **_JSON_BODY}),
    },
    "/api/v1/queues/{name}/groups/{group}": {
        "delete": _op("Delete a consumer group", {"parameters": [_NAME, _GROUP]}),
    },
    "/api/v1/queues/{name}/groups/{group}/seek": {
        "post": _op("Move a group to an offset or a time", {"parameters": [_NAME, _GROUP], **_JSON_BODY}),
    },
}  # fmt: skip
