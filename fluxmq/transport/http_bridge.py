"""The HTTP bridge: `POST /publish` turns a JSON body into a message for the broker core, and
`GET /health` says the bridge is up.

    POST /publish
    Content-Type: application/json

    {"topic": "sensors/1", "payload": "21.5", "encoding": "plain", "qos": 1, "retain": false,
     "properties": {"content_type": "text/plain", "response_topic": "replies/1",
                    "correlation_data": "req-7", "message_expiry_interval": 60,
                    "payload_format_indicator": 1, "user_properties": {"unit": "C"}}}

Answers (JSON): 200 `{"status":"ok"}` once the message is routed; 400 naming the field for a bad
body, topic, QoS, encoding or base64; 401 when authentication refuses the client (HTTP Basic
credentials, checked like an MQTT CONNECT's username and password; none = anonymous); 403 when
the authorisation hook refuses the topic (and for `$SYS` topics); 405 for another method; 413 when the PUBLISH it makes would be larger than
`broker.max_message_size`; 415 for a content type other than JSON; 429 over the per-IP message
rate (`ratelimit.message`). Errors are `{"status":"error","error":"<what>"}`.

The message enters the broker by `Broker.publish`, as every door's does. Each request is first
authenticated (`Hooks.authenticate`, protocol `http`) and then authorised
(`Hooks.authorize_publish`) with client id `http:<ip>` and the username of the `Authorization:
Basic` header or, on a TLS listener with `use_identity_as_username`, the client certificate's
identity.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable

import orjson

from fluxmq._speedups import codec
from fluxmq._speedups.message import Message
from fluxmq.broker.hooks import ClientInfo
from fluxmq.transport.http import Request, Response, error_response, json_response
from fluxmq.transport.tls import peer_identity

_OK = json_response(200, {"status": "ok"})
_HEALTHY = json_response(200, {"status": "healthy"})
_FIELDS = frozenset({"topic", "payload", "encoding", "qos", "retain", "properties"})
_PROPERTIES = frozenset(
    {
        "content_type",
        "response_topic",
        "correlation_data",
        "message_expiry_interval",
        "payload_format_indicator",
        "user_properties",
    }
)
_UINT32_MAX = 4294967295
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="fluxmq"'}


def basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    """(username, password) of an `Authorization: Basic` header; None without one."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        if not sep:
            raise ValueError
        return user.decode("utf-8"), password
    except (binascii.Error, ValueError):
        raise BadRequest("Authorization: malformed Basic credentials") from None


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _string(obj: dict, name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{where}{name}: must be a string")
    return value


def _topic(value, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name}: must be a string")
    if not value:
        raise BadRequest(f"{name}: must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > 65535:
        raise BadRequest(f"{name}: longer than 65535 bytes")
    if "+" in value or "#" in value:
        raise BadRequest(f"{name}: wildcards (+, #) are not allowed in a topic name")
    if not codec.valid_topic_name(value):
        raise BadRequest(f"{name}: not a valid topic name")
    return value


def parse_publish(body: bytes, max_qos: int) -> Message:
    """The message a `POST /publish` body asks for; BadRequest naming the field otherwise."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise BadRequest("body: must be a JSON object")
    for name in obj:
        if name not in _FIELDS:
            raise BadRequest(f"{name}: unknown field (expected {', '.join(sorted(_FIELDS))})")
    if "topic" not in obj:
        raise BadRequest("topic: required")
    topic = _topic(obj["topic"], "topic")
    if topic.startswith("$SYS"):
        raise BadRequest("topic: clients may not publish to $SYS topics", 403)

    encoding = obj.get("encoding", "plain")
    if encoding not in ("plain", "base64"):
        raise BadRequest('encoding: must be "plain" or "base64"')
    text = obj.get("payload", "")
    if not isinstance(text, str):
        raise BadRequest("payload: must be a string")
    if encoding == "base64":
        try:
            payload = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("payload: invalid base64") from None
    else:
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("payload: not valid UTF-8 text") from None

    qos = obj.get("qos", 0)
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise BadRequest("qos: must be 0, 1 or 2")
    if qos > max_qos:
        raise BadRequest(f"qos: above the broker's maximum QoS {max_qos}")
    retain = obj.get("retain", False)
    if not isinstance(retain, bool):
        raise BadRequest("retain: must be true or false")

    msg = Message(topic, payload, qos, retain)
    props = obj.get("properties")
    if props is not None:
        _properties(msg, props, payload)
    return msg


def _properties(msg: Message, props, payload: bytes) -> None:
    where = "properties."
    if not isinstance(props, dict):
        raise BadRequest("properties: must be a JSON object")
    for name in props:
        if name not in _PROPERTIES:
            raise BadRequest(f"{where}{name}: unknown property")
    msg.content_type = _string(props, "content_type", where)
    rt = props.get("response_topic")
    if rt is not None:
        msg.response_topic = _topic(rt, where + "response_topic")
    cd = _string(props, "correlation_data", where)
    if cd is not None:
        msg.correlation_data = cd.encode("utf-8")
    expiry = props.get("message_expiry_interval")
    if expiry is not None:
        if (
            isinstance(expiry, bool)
            or not isinstance(expiry, int)
            or not 1 <= expiry <= _UINT32_MAX
        ):
            raise BadRequest(
                f"{where}message_expiry_interval: must be an integer from 1 to {_UINT32_MAX}"
            )
        msg.expires_at = time.time() + expiry
    pfi = props.get("payload_format_indicator")
    if pfi is not None:
        if isinstance(pfi, bool) or pfi not in (0, 1):
            raise BadRequest(f"{where}payload_format_indicator: must be 0 or 1")
        if pfi == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(
                    f"{where}payload_format_indicator: 1 but the payload is not UTF-8"
                ) from None
        msg.payload_format = pfi
    ups = props.get("user_properties")
    if ups is not None:
        if not isinstance(ups, dict):
            raise BadRequest(f"{where}user_properties: must be a JSON object of strings")
        pairs = []
        for k, v in ups.items():
            if not isinstance(v, str):
                raise BadRequest(f"{where}user_properties.{k}: must be a string")
            pairs.append((k, v))
        msg.user_properties = pairs or None


def packet_size(msg: Message, payload_len: int) -> int:
    """About the size of the PUBLISH packet the message makes (fixed header at most 5 bytes)."""
    n = 2 + len(msg.topic.encode("utf-8")) + payload_len + (2 if msg.qos else 0)
    if msg.content_type:
        n += 3 + len(msg.content_type.encode())
    if msg.response_topic:
        n += 3 + len(msg.response_topic.encode())
    if msg.correlation_data:
        n += 3 + len(msg.correlation_data)
    for k, v in msg.user_properties or ():
        n += 5 + len(k.encode()) + len(v.encode())
    return n + 5 + 10


class Bridge:
    """The request handler of an HTTP bridge listener."""

    def __init__(
        self,
        broker,
        max_message_size: int,
        max_qos: int,
        limiter=None,
        use_identity_as_username: bool = False,
        tls: bool = False,
    ) -> None:
        self.broker = broker
        self.max_message_size = max_message_size
        self.max_qos = max_qos
        self.limiter = limiter  # fluxmq.transport.limits.IPLimiter or None
        self.use_identity = use_identity_as_username
        self.tls = tls
        self.published = 0
        self.refused = 0

    @property
    def max_body(self) -> int:
        """Largest request body read: base64 and JSON escaping make it larger than the payload."""
        return 2 * self.max_message_size + 65536

    def __call__(self, req: Request) -> Response:
        if req.path == "/publish":
            if req.method != "POST":
                return error_response(405, "method not allowed: use POST", {"Allow": "POST"})
            try:
                return self.publish(req)
            except BadRequest as exc:
                self.refused += 1
                headers = _CHALLENGE if exc.status == 401 else None
                return error_response(exc.status, str(exc), headers)
        if req.path == "/health":
            if req.method not in ("GET", "HEAD"):
                return error_response(405, "method not allowed: use GET", {"Allow": "GET, HEAD"})
            return _HEALTHY
        return error_response(404, f"not found: {req.path} (use POST /publish or GET /health)")

    def publish(self, req: Request) -> Response:
        if not _is_json(req.headers.get("content-type")):
            raise BadRequest("content type must be application/json", 415)
        if len(req.body) > self.max_body:
            raise BadRequest("request body too large", 413)
        msg = parse_publish(req.body, self.max_qos)
        if packet_size(msg, len(msg.payload)) > self.max_message_size:
            raise BadRequest(
                f"message larger than broker.max_message_size ({self.max_message_size} bytes)",
                413,
            )
        username: str | None = None
        password: bytes | None = None
        identity, sans = None, ()
        if self.tls:
            identity, sans = peer_identity(req.transport)
            if self.use_identity:
                if identity is None:
                    raise BadRequest("a client certificate is required", 403)
                username = identity
        creds = basic_credentials(req.headers.get("authorization"))
        if creds is not None and not self.use_identity:
            username, password = creds
        info = ClientInfo(
            f"http:{req.remote}", username, password, req.remote, "http",
            "http.tls" if self.tls else "http", identity, sans, verified=self.use_identity,
        )  # fmt: skip
        result = self.broker.hooks.authenticate(info)
        if isinstance(result, int):
            return self._authorised(result, info, msg, req)
        return self._await(result, info, msg, req)

    async def _await(self, pending: Awaitable[int], info, msg: Message, req: Request) -> Response:
        try:
            return self._authorised(await pending, info, msg, req)
        except BadRequest as exc:
            self.refused += 1
            headers = _CHALLENGE if exc.status == 401 else None
            return error_response(exc.status, str(exc), headers)

    def _authorised(self, refusal: int, info, msg: Message, req: Request) -> Response:
        if refusal:
            why = "bad username or password" if refusal == 0x86 else "not authorized"
            raise BadRequest(why, 401)
        hooks = self.broker.hooks
        if not hooks.authorize_publish(info.client_id, info.username, msg.topic):
            raise BadRequest("not authorized to publish to this topic", 403)
        if self.limiter is not None and not self.limiter.allow(req.remote):
            self.broker.counters.publish_dropped += 1
            raise BadRequest("message rate exceeded", 429)
        d = self.broker.dispatcher
        if self.broker.publish(msg) == 0 and d.refused:
            # A durable queue refused it: 404 no such queue, 507 full, 413 too large.
            code, d.refused = d.refused, 0
            self.broker.counters.publish_dropped += 1
            raise BadRequest(d.refused_why, {0x90: 404, 0x97: 507}.get(code, 413))
        self.published += 1
        return _OK
