"""The health endpoints (`server.health_addr`, default `:8081`):

- `GET /health`: 200 `{"status":"healthy"}` while the process runs.
- `GET /ready`: 200 `{"status":"ready"}` once every listener is bound and storage is open;
  503 `{"status":"not_ready","details":{...}}` otherwise (while starting, and once shutting down).
- `GET /metrics`: Prometheus text format (fluxmq.ops.metrics); no authentication, like the
  other health endpoints: bind `server.health_addr` to a private address.
- `GET /ready` also lists, in `details.warnings`, what an operator must know (e.g. listening
  on other machines' reach with no authentication).
- `GET /cluster/status`: `{"node_id", "mode", "is_leader", "sessions", "sessions_total",
  "listeners"}`; `mode` is `standalone` (one node: it is its own leader).

Another method gets 405, another path 404.
"""

from __future__ import annotations

from fluxmq.transport.http import Request, Response, error_response, json_response

_HEALTHY = json_response(200, {"status": "healthy"})


class Health:
    """The request handler of the health listener; `node` is the running `fluxmq.app.Node`."""

    def __init__(self, node) -> None:
        self.node = node

    def __call__(self, req: Request) -> Response:
        if req.path not in ("/health", "/ready", "/cluster/status", "/metrics"):
            return error_response(404, f"not found: {req.path}")
        if req.method not in ("GET", "HEAD"):
            return error_response(405, "method not allowed: use GET", {"Allow": "GET, HEAD"})
        if req.path == "/health":
            return _HEALTHY
        if req.path == "/metrics":
            metrics = self.node.metrics
            return Response(200, metrics.render(), metrics.content_type)
        if req.path == "/ready":
            ready, details = self.node.readiness()
            if ready:
                warnings = details.get("warnings")
                if warnings:  # e.g. reachable from other machines with no authentication
                    body = {"status": "ready", "details": {"warnings": warnings}}
                    return json_response(200, body)
                return json_response(200, {"status": "ready"})
            return json_response(503, {"status": "not_ready", "details": details})
        return json_response(200, self.node.cluster_status())
