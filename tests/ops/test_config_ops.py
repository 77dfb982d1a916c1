"""The configuration of security and operations: values, errors that name the key, ${ENV}."""

from __future__ import annotations

import pytest

from fluxmq.config import ConfigError, load_config


def load(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return load_config(p)


@pytest.mark.parametrize(
    "text, message",
    [
        ("webhook: {endpoints: [{url: 'ftp://x'}]}",
         r"^webhook\.endpoints\[0\]\.url: expected an http:// or https:// URL$"),
        ("webhook: {endpoints: [{url: 'http://x'}, {url: 'http://y', events: [nope]}]}",
         r"^webhook\.endpoints\[1\]\.events: item 1 \(\"nope\"\): unknown event"),
        ("webhook: {endpoints: [{url: 'http://x', topic_filters: ['a/#/b']}]}",
         r"^webhook\.endpoints\[0\]\.topic_filters: item 1 .*not a valid MQTT topic filter"),
        ("webhook: {endpoints: [{url: 'http://x', retry: {max_atempts: 2}}]}",
         r"^webhook\.endpoints\[0\]\.retry: unknown key \"max_atempts\""),
        ("webhook: {endpoints: [{url: 'http://x', urll: 1}]}",
         r"^unknown key webhook\.endpoints\[0\]\.urll \(did you mean"),
        ("webhook: {endpoints: {url: 'http://x'}}", r"^webhook\.endpoints: expected a list"),
        ("webhook: {queue_size: 10}", r"^webhook\.queue_size: expected an integer >= 100"),
        ("server: {api: {addr: ':8090'}}", r"^server\.api\.token: required when"),
        ("auth: {allow_anonymous: maybe}", r"^auth\.allow_anonymous: expected true, false or auto"),
        ("auth: {http: {url: 'localhost:80'}}", r"^auth\.http\.url: expected an http"),
        ("auth: {acl_file: /nonexistent/acl}", r"^auth\.acl_file: ACL file not found"),
    ],
)  # fmt: skip
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text + "\n")


def test_values_and_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "t0k")
    monkeypatch.setenv("API_TOKEN", "a9i")
    cfg = load(tmp_path, """
auth: {allow_anonymous: false}
server: {api: {addr: "127.0.0.1:8090", token: "${API_TOKEN}"}}
webhook:
  enabled: true
  defaults: {retry: {max_attempts: 4, initial_interval: 2s}}
  endpoints:
    - {url: "http://h/1", headers: {Authorization: "Bearer ${HOOK_TOKEN}"}, timeout: 1s,
       retry: {max_attempts: 9}, events: [client.connected]}
""")  # fmt: skip
    assert cfg.auth.allow_anonymous is False
    assert cfg.server.api.token == "a9i"
    ep = cfg.webhook.endpoints[0]
    assert dict(ep.headers) == {"Authorization": "Bearer t0k"}
    assert ep.timeout == 1.0 and dict(ep.retry) == {"max_attempts": 9}
    from fluxmq.ops.webhooks import Endpoint

    e = Endpoint(ep, cfg.webhook, 0)
    assert (e.retry.max_attempts, e.retry.initial_interval, e.timeout) == (9, 2.0, 1.0)
    assert e.name == "endpoint0" and e.events == {"client.connected"}
    assert load(tmp_path, "auth: {allow_anonymous: AUTO}\n").auth.allow_anonymous == "auto"
    monkeypatch.delenv("HOOK_TOKEN")
    with pytest.raises(ConfigError, match="environment variable HOOK_TOKEN is not set"):
        load(tmp_path, "webhook: {endpoints: [{url: 'http://h', headers: {A: '${HOOK_TOKEN}'}}]}\n")
