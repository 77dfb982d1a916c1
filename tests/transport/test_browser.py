"""MQTT.js in headless Chromium over WebSocket, with Mosquitto's TCP clients on the other side.

The test serves a page and MQTT.js's browser bundle (tests/transport/js/node_modules, installed
by `scripts/install-peers.sh test`) from a local HTTP server; Debian's `chromium` opens the page,
which connects to the broker over WebSocket, subscribes, and reports each step back to the same
HTTP server (POST /event). The test publishes with `mosquitto_pub` over TCP and checks that the
page got it, and the page publishes what it got to a topic `mosquitto_sub` listens to.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.transport.conftest import HOST

pytestmark = pytest.mark.timeout(120)

BUNDLE = Path(__file__).parent / "js" / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>FluxMQ WebSocket test</title>
<script src="/mqtt.min.js"></script></head>
<body><script>
const params = new URLSearchParams(location.search);
function report(ev) {
  return fetch("/event", {method: "POST", body: JSON.stringify(ev)});
}
window.onerror = (msg) => { report({type: "error", message: String(msg)}); };
const client = mqtt.connect(params.get("url"), {
  clientId: "browser-" + params.get("version"),
  protocolVersion: Number(params.get("version")),
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
client.on("error", (e) => report({type: "error", message: String(e)}));
client.on("connect", () => {
  report({type: "connected"});
  client.subscribe("browser/in/#", {qos: 1}, (err, granted) => {
    report({type: "subscribed", err: err ? String(err) : null,
            qos: granted && granted.length ? granted[0].qos : null});
  });
});
client.on("message", (topic, payload) => {
  const text = new TextDecoder().decode(payload);
  report({type: "message", topic: topic, payload: text});
  client.publish("browser/out", "echo:" + text, {qos: 1}, () => report({type: "published"}));
});
</script></body></html>
"""


class _PageServer:
    """Serves the page and the bundle; collects the page's reports in `events`."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/":
                    self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                elif path == "/mqtt.min.js":
                    self._send(200, BUNDLE.read_bytes(), "application/javascript")
                else:
                    self._send(404, b"", "text/plain")

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                events.put(json.loads(self.rfile.read(n) or b"{}"))
                self._send(204, b"", "text/plain")

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, kind: str, timeout: float = 30.0) -> dict:
        while True:
            ev = self.events.get(timeout=timeout)
            if ev.get("type") == "error":
                raise AssertionError(f"the page reported an error: {ev['message']}")
            if ev.get("type") == kind:
                return ev

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is required (scripts/install-peers.sh test installs it)")


@pytest.mark.parametrize("version", [4, 5], ids=["v3.1.1", "v5"])
def test_mqtt_js_in_chromium_talks_to_mosquitto_over_tcp(mqtt_broker, mosquitto, tmp_path,
                                                         version):  # fmt: skip
    if not BUNDLE.exists():
        pytest.fail(f"{BUNDLE} is missing: run scripts/install-peers.sh test")
    _, ports = mqtt_broker({"ws": {}})
    page = _PageServer()
    out = mosquitto.sub_ready("-p", str(ports["tcp"]), "-t", "browser/out", "-C", "1", "-W", "60")
    url = f"ws://{HOST}:{ports['ws']}/mqtt"
    browser = subprocess.Popen(
        [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
            "--remote-debugging-port=0",  # keeps the headless browser open on the page
            f"http://{HOST}:{page.port}/?url={url}&version={version}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        page.wait("connected", 60)
        assert page.wait("subscribed")["qos"] == 1
        r = mosquitto.pub("-p", str(ports["tcp"]), "-t", "browser/in/x", "-m", "hello browser",
                          "-q", "1")  # fmt: skip
        assert r.returncode == 0, r.stderr
        got = page.wait("message")
        assert (got["topic"], got["payload"]) == ("browser/in/x", "hello browser")
        page.wait("published")
        assert mosquitto.payloads(out) == ["echo:hello browser"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)  # the browser and its helper processes
        browser.wait(10)
        page.close()
