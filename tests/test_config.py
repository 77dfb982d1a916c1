"""The configuration schema, loader and error messages; docs and example kept in step with it."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from fluxmq import config as cfgmod
from fluxmq.config import (
    Addr,
    Bool,
    Config,
    ConfigError,
    Duration,
    Enum,
    Int,
    Section,
    SectionInfo,
    SettingInfo,
    Size,
    Str,
    iter_schema,
    iter_settings,
    load_config,
    parse_addr,
    parse_duration,
    parse_size,
    section,
    setting,
    subsection,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "examples" / "fluxmq.yaml"

_TLS = {
    "cert_file": "",
    "key_file": "",
    "ca_file": "",
    "client_auth": "",
    "min_version": "TLS1.2",
    "cipher_suites": [],
    "prefer_server_cipher_suites": False,
    "use_identity_as_username": False,
}
_LIMITS = {"max_connections": 10000, "read_timeout": "60s", "write_timeout": "60s"}
_WS = {"path": "/mqtt", "allowed_origins": [], **_LIMITS}

_COAP = {"block_size": 1024, "ack_timeout": "2s", "max_retransmit": 4, "max_peers": 10000,
         "idle_timeout": "300s"}  # fmt: skip
_DTLS = {"cert_file": "", "key_file": "", "ca_file": "", "cipher_suites": []}

EXPECTED_DEFAULTS = {
    "server": {
        "tcp": {
            "plain": {"addr": ":1883", **_LIMITS},
            "tls": {"addr": "", **_LIMITS, **_TLS},
            "mtls": {"addr": "", **_LIMITS, **_TLS},
        },
        "websocket": {
            "plain": {"addr": ":8083", **_WS},
            "tls": {"addr": "", **_WS, **_TLS},
            "mtls": {"addr": "", **_WS, **_TLS},
        },
        "http": {
            "plain": {"addr": ":8080", "read_timeout": "30s"},
            "tls": {"addr": "", "read_timeout": "30s", **_TLS},
            "mtls": {"addr": "", "read_timeout": "30s", **_TLS},
        },
        "coap": {
            "plain": {"addr": ":5683", **_COAP},
            "dtls": {"addr": "", **_COAP, **_DTLS},
            "mdtls": {"addr": "", **_COAP, **_DTLS},
        },
        "health_enabled": True,
        "health_addr": ":8081",
        "api": {"addr": "", "token": ""},
    },
    "broker": {
        "max_message_size": 1048576,
        "max_retained_messages": 10000,
        "max_qos": 2,
        "max_inflight": 100,
        "max_pending_bytes": 1048576,
        "retry_interval": "20s",
        "max_topic_alias": 10,
        "receive_maximum": 1024,
        "max_keepalive": 65535,
        "sys_interval": "10s",
    },
    "session": {
        "max_offline_queue_size": 1000,
        "offline_queue_policy": "evict",
        "default_expiry_interval": 7200,
        "max_expiry_interval": 4294967295,
    },
    "log": {"level": "info", "format": "text"},
    "storage": {"type": "lmdb", "path": "./data", "fsync": "interval", "fsync_interval": "1s"},
    "ratelimit": {
        "enabled": False,
        "connection": {"enabled": True, "rate": 1.6667, "burst": 20, "cleanup_interval": "300s"},
        "message": {"enabled": True, "rate": 1000, "burst": 100},
        "subscribe": {"enabled": True, "rate": 100, "burst": 10},
    },
    "cluster": {"node_id": "fluxmq-1"},
    "auth": {
        "allow_anonymous": "auto",
        "password_file": "",
        "acl_file": "",
        "http": {"url": "", "timeout": "5s", "cache_ttl": "60s", "on_error": "deny", "headers": {}},
    },
    "webhook": {
        "enabled": False,
        "queue_size": 10000,
        "drop_policy": "oldest",
        "workers": 5,
        "include_payload": False,
        "shutdown_timeout": "30s",
        "defaults": {
            "timeout": "5s",
            "retry": {
                "max_attempts": 3,
                "initial_interval": "1s",
                "max_interval": "30s",
                "multiplier": 2.0,
            },
            "circuit_breaker": {"failure_threshold": 5, "reset_timeout": "60s"},
        },
        "endpoints": [],
    },
    "queue": {
        "auto_create": True,
        "retention_interval": "30s",
        "defaults": {
            "partitions": 1,
            "ordering": "partition",
            "visibility_timeout": "30s",
            "retry": {
                "max_retries": 10,
                "initial_backoff": "5s",
                "max_backoff": "300s",
                "multiplier": 2.0,
            },
            "dlq": {"enabled": True, "topic": ""},
            "retention": {
                "max_age": "604800s",
                "max_bytes": 0,
                "compaction": False,
                "segment_bytes": 67108864,
                "segment_age": "3600s",
            },
            "limits": {"max_message_size": 1048576, "max_depth": 100000},
        },
    },
    "queues": [],
}


def write(tmp_path: Path, text: str, name: str = "fluxmq.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


# -- defaults ----------------------------------------------------------------------------------


def test_none_gives_every_default():
    assert load_config(None).to_dict() == EXPECTED_DEFAULTS


def test_defaults_as_typed_attributes():
    cfg = load_config(None)
    assert cfg.server.tcp.plain.addr == ":1883"
    assert cfg.server.tcp.plain.max_connections == 10000
    assert cfg.server.tcp.plain.read_timeout == 60.0
    assert cfg.server.tcp.plain.write_timeout == 60.0
    assert cfg.broker.max_message_size == 1048576
    assert cfg.broker.max_retained_messages == 10000
    assert cfg.broker.max_qos == 2
    assert cfg.broker.max_inflight == 100
    assert cfg.broker.retry_interval == 20.0
    assert cfg.broker.max_topic_alias == 10
    assert cfg.broker.receive_maximum == 1024
    assert cfg.broker.max_keepalive == 65535
    assert cfg.broker.sys_interval == 10.0
    assert cfg.session.max_offline_queue_size == 1000
    assert cfg.session.offline_queue_policy == "evict"
    assert cfg.session.default_expiry_interval == 7200
    assert cfg.session.max_expiry_interval == 4294967295
    assert cfg.log.level == "info"
    assert cfg.log.format == "text"
    assert cfg.storage.type == "lmdb"
    assert cfg.storage.path == "./data"


def test_config_constructor_equals_loaded_defaults():
    assert Config() == load_config(None)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "broker:\n", "server: {}\n"])
def test_empty_file_or_empty_sections_give_defaults(tmp_path, text):
    assert load_text(tmp_path, text) == Config()


def test_partial_file_keeps_other_defaults(tmp_path):
    cfg = load_text(
        tmp_path, "broker:\n  max_qos: 1\nserver:\n  tcp:\n    plain:\n      addr: ''\n"
    )
    assert cfg.broker.max_qos == 1
    assert cfg.server.tcp.plain.addr == ""
    assert cfg.broker.max_inflight == 100
    assert cfg.server.tcp.plain.max_connections == 10000


def test_every_key_can_be_set(tmp_path):
    text = """
server: {tcp: {plain: {addr: "127.0.0.1:1999", max_connections: 0, read_timeout: 5,
                       write_timeout: 1m}}}
broker: {max_message_size: 64KB, max_retained_messages: 0, max_qos: 0, max_inflight: 65535,
         max_pending_bytes: 64KB, retry_interval: 0, max_topic_alias: 0, receive_maximum: 1, max_keepalive: 0,
         sys_interval: 1h30m}
session: {max_offline_queue_size: 1, offline_queue_policy: reject, default_expiry_interval: 0,
          max_expiry_interval: 60}
log: {level: debug, format: json}
storage: {type: lmdb, path: /var/lib/fluxmq}
"""
    assert load_text(tmp_path, text).to_dict() == {
        **EXPECTED_DEFAULTS,
        "server": {
            **EXPECTED_DEFAULTS["server"],
            "tcp": {
                **EXPECTED_DEFAULTS["server"]["tcp"],
                "plain": {
                    "addr": "127.0.0.1:1999",
                    "max_connections": 0,
                    "read_timeout": "5s",
                    "write_timeout": "60s",
                },
            },
        },
        "broker": {
            "max_message_size": 65536,
            "max_retained_messages": 0,
            "max_qos": 0,
            "max_inflight": 65535,
            "max_pending_bytes": 65536,
            "retry_interval": "0s",
            "max_topic_alias": 0,
            "receive_maximum": 1,
            "max_keepalive": 0,
            "sys_interval": "5400s",
        },
        "session": {
            "max_offline_queue_size": 1,
            "offline_queue_policy": "reject",
            "default_expiry_interval": 0,
            "max_expiry_interval": 60,
        },
        "log": {"level": "debug", "format": "json"},
        "storage": {
            "type": "lmdb",
            "path": "/var/lib/fluxmq",
            "fsync": "interval",
            "fsync_interval": "1s",
        },
    }


def test_config_is_frozen_and_slotted():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.broker.max_qos = 1  # type: ignore[misc]
    assert not hasattr(cfg.broker, "__dict__")
    assert not hasattr(cfg, "__dict__")


def test_to_dict_round_trips_through_yaml(tmp_path):
    text = "broker: {retry_interval: 1.5, sys_interval: 250ms, max_message_size: 2MB}\n"
    cfg = load_text(tmp_path, text)
    again = load_text(tmp_path, yaml.safe_dump(cfg.to_dict()))
    assert again == cfg
    assert again.broker.retry_interval == 1.5
    assert again.broker.sys_interval == 0.25
    assert again.broker.max_message_size == 2 * 1024 * 1024


def test_overrides_take_precedence_over_the_file(tmp_path):
    path = write(tmp_path, "log: {level: error, format: json}\n")
    cfg = load_config(path, overrides={"log.level": "debug"})
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")
    assert load_config(None, overrides={"log.level": "warn"}).log.level == "warning"


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match=r"^log\.level: expected one of debug, info"):
        load_config(None, overrides={"log.level": "loud"})
    with pytest.raises(
        ConfigError, match=r"^unknown key log\.levle \(did you mean log\.level\?\)$"
    ):
        load_config(None, overrides={"log.levle": "info"})


def test_load_accepts_str_and_pathlike(tmp_path):
    path = write(tmp_path, "broker: {max_qos: 1}\n")
    assert load_config(str(path)).broker.max_qos == 1
    assert load_config(path).broker.max_qos == 1


# -- value errors: exact messages with the full key path ---------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("broker: {max_qos: 3}", "broker.max_qos: expected an integer from 0 to 2, got 3"),
        ("broker: {max_qos: -1}", "broker.max_qos: expected an integer from 0 to 2, got -1"),
        ("broker: {max_qos: true}", "broker.max_qos: expected an integer from 0 to 2, got true"),
        ("broker: {max_qos: '2'}", 'broker.max_qos: expected an integer from 0 to 2, got "2"'),
        ("broker: {max_qos: 2.0}", "broker.max_qos: expected an integer from 0 to 2, got 2.0"),
        ("broker: {max_qos: null}", "broker.max_qos: expected an integer from 0 to 2, got null"),
        ("broker: {max_qos: [1]}", "broker.max_qos: expected an integer from 0 to 2, got a list"),
        (
            "server: {tcp: {plain: {max_connections: -1}}}",
            "server.tcp.plain.max_connections: expected an integer >= 0, got -1",
        ),
        (
            "broker: {max_inflight: 0}",
            "broker.max_inflight: expected an integer from 1 to 65535, got 0",
        ),
        (
            "broker: {max_inflight: 65536}",
            "broker.max_inflight: expected an integer from 1 to 65535, got 65536",
        ),
        (
            "broker: {max_pending_bytes: 1KB}",
            'broker.max_pending_bytes: expected a size from 16384 to 268435455 bytes, got "1KB" '
            "(1024 bytes)",
        ),
        (
            "broker: {receive_maximum: 0}",
            "broker.receive_maximum: expected an integer from 1 to 65535, got 0",
        ),
        (
            "broker: {max_topic_alias: 70000}",
            "broker.max_topic_alias: expected an integer from 0 to 65535, got 70000",
        ),
        (
            "broker: {max_keepalive: 65536}",
            "broker.max_keepalive: expected an integer from 0 to 65535, got 65536",
        ),
        (
            "broker: {max_retained_messages: -5}",
            "broker.max_retained_messages: expected an integer >= 0, got -5",
        ),
        (
            "session: {max_offline_queue_size: 0}",
            "session.max_offline_queue_size: expected an integer >= 1, got 0",
        ),
        (
            "session: {default_expiry_interval: 4294967296}",
            "session.default_expiry_interval: expected an integer from 0 to 4294967295, "
            "got 4294967296",
        ),
        (
            "session: {max_expiry_interval: -1}",
            "session.max_expiry_interval: expected an integer from 0 to 4294967295, got -1",
        ),
        (
            "broker: {max_message_size: 1023}",
            "broker.max_message_size: expected a size from 1024 to 268435455 bytes, got 1023",
        ),
        (
            "broker: {max_message_size: 1GB}",
            "broker.max_message_size: expected a size from 1024 to 268435455 bytes, "
            'got "1GB" (1073741824 bytes)',
        ),
        (
            "broker: {max_message_size: 10XB}",
            'broker.max_message_size: invalid size "10XB" (expected a number of bytes or a '
            'string like "512KB", "10MB", "1GB", where 1KB = 1024 bytes)',
        ),
        (
            "server: {tcp: {plain: {read_timeout: 0}}}",
            "server.tcp.plain.read_timeout: expected a duration > 0, got 0",
        ),
        (
            "server: {tcp: {plain: {write_timeout: 0s}}}",
            'server.tcp.plain.write_timeout: expected a duration > 0, got "0s"',
        ),
        (
            "server: {tcp: {plain: {read_timeout: soon}}}",
            'server.tcp.plain.read_timeout: invalid duration "soon" (expected a number of '
            'seconds or a string like "100ms", "30s", "5m", "2h", "1h30m")',
        ),
        (
            "broker: {retry_interval: -1}",
            "broker.retry_interval: invalid duration -1: must be a finite value >= 0",
        ),
        (
            "broker: {sys_interval: .inf}",
            "broker.sys_interval: invalid duration inf: must be a finite value >= 0",
        ),
        (
            "log: {level: verbose}",
            'log.level: expected one of debug, info, warning, error, got "verbose"',
        ),
        ("log: {format: xml}", 'log.format: expected one of text, json, got "xml"'),
        ("log: {format: 1}", "log.format: expected one of text, json, got 1"),
        ("storage: {type: badger}", 'storage.type: expected one of memory, lmdb, got "badger"'),
        (
            "session: {offline_queue_policy: drop}",
            'session.offline_queue_policy: expected one of evict, reject, got "drop"',
        ),
        ("storage: {path: ''}", 'storage.path: expected a non-empty path, got ""'),
        ("storage: {path: 5}", "storage.path: expected a non-empty path, got 5"),
        (
            "server: {tcp: {plain: {addr: '1883'}}}",
            'server.tcp.plain.addr: invalid address "1883" (expected "host:port", ":port" '
            '(all interfaces), "[ipv6]:port", or "" to disable)',
        ),
        (
            "server: {tcp: {plain: {addr: 1883}}}",
            'server.tcp.plain.addr: invalid address 1883 (expected "host:port", ":port" '
            '(all interfaces), "[ipv6]:port", or "" to disable)',
        ),
        (
            "server: {tcp: {plain: {addr: ':0'}}}",
            'server.tcp.plain.addr: invalid address ":0": port must be a number from 1 to 65535',
        ),
        ("broker: 5", "broker: expected a mapping of settings, got 5"),
        ("server: {tcp: [a]}", "server.tcp: expected a mapping of settings, got a list"),
    ],
)
def test_value_error_messages(tmp_path, text, message):
    err = error_of(tmp_path, text + "\n")
    assert str(err) == message
    assert err.key == message.split(":", 1)[0]


def test_config_error_is_an_exception_with_one_line():
    assert issubclass(ConfigError, Exception)
    err = ConfigError("a: b", "a")
    assert (str(err), err.key) == ("a: b", "a")


def test_only_the_first_problem_is_reported_in_schema_order(tmp_path):
    err = error_of(tmp_path, "broker: {max_qos: 9, max_inflight: 0}\n")
    assert err.key == "broker.max_qos"


# -- unknown keys and suggestions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "server: {tcp: {plain: {adr: ':1883'}}}",
            "unknown key server.tcp.plain.adr (did you mean server.tcp.plain.addr?)",
        ),
        ("brokr: {}", "unknown key brokr (did you mean broker?)"),
        ("broker: {maxqos: 1}", "unknown key broker.maxqos (did you mean broker.max_qos?)"),
        (
            "broker: {receive_max: 5}",
            "unknown key broker.receive_max (did you mean broker.receive_maximum?)",
        ),
        # the same name in another section
        ("session: {max_qos: 1}", "unknown key session.max_qos (did you mean broker.max_qos?)"),
        # a section at the wrong level
        ("tcp: {}", "unknown key tcp (did you mean server.tcp?)"),
        # keys of the original Go broker that were renamed
        (
            "storage: {badger_dir: /x}",
            "unknown key storage.badger_dir (did you mean storage.path?)",
        ),
        (
            "session: {max_inflight_messages: 5}",
            "unknown key session.max_inflight_messages (did you mean broker.max_inflight?)",
        ),
        # no close match: list what is valid here
        (
            "xyzzy: {enabled: true}",
            "unknown key xyzzy (valid keys here: server, broker, session, log, storage, "
            "ratelimit, cluster, auth, webhook, queue, queues)",
        ),
        (
            "log: {colour: true}",
            "unknown key log.colour (valid keys here: level, format)",
        ),
        # a non-string key (YAML reads `yes` as true)
        ("log: {yes: 1}", "unknown key log.true (valid keys here: level, format)"),
    ],
)
def test_unknown_keys(tmp_path, text, message):
    err = error_of(tmp_path, text + "\n")
    assert str(err) == message
    assert err.key == message.split()[2]


def test_unknown_key_deep_inside_a_valid_section(tmp_path):
    err = error_of(tmp_path, "server: {tcp: {plain: {addr: ':1883', tls: true}}}\n")
    assert str(err).startswith("unknown key server.tcp.plain.tls ")
    assert "did you mean server.tcp.plain?" not in str(err)


def test_no_parsed_but_ignored_keys_of_later_features(tmp_path):
    for text in ("cluster: {etcd: {}}", "server: {amqp: {}}"):
        assert str(error_of(tmp_path, text + "\n")).startswith("unknown key ")


# -- file-level errors -------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file not found: {path}"


def test_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"cannot read config file {tmp_path}: it is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_names_the_path(tmp_path):
    path = write(tmp_path, "broker: {}\n")
    path.chmod(0)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"cannot read config file {path}: permission denied"


def test_other_os_errors_name_the_path(tmp_path):
    path = write(tmp_path, "broker: {}\n") / "inside-a-file.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"cannot read config file {path}: Not a directory"


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"storage: {path: /d\xe9j\xe0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"cannot read config file {path}: not UTF-8 (invalid byte at offset 18)"
    )


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (
            "broker:\n  max_qos: 1\n bad: [\n",
            "line 3, column 2",
            "expected <block end>, but found '<block mapping start>'",
        ),
        ("broker: {max_qos: 1\n", "line 2, column 1", None),
        ("a: b: c\n", "line 1, column 5", "mapping values are not allowed here"),
        ("broker:\n\tmax_qos: 1\n", "line 2, column 1", None),
    ],
)
def test_yaml_syntax_errors_give_line_and_column(tmp_path, text, where, problem):
    path = write(tmp_path, text)
    message = str(error_of(tmp_path, text))
    assert message.startswith(f"{path}: invalid YAML at {where}: ")
    assert "\n" not in message
    if problem:
        assert message.endswith(problem)


def test_duplicate_keys_are_an_error(tmp_path):
    path = write(tmp_path, "broker:\n  max_qos: 1\n  max_qos: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f'{path}: invalid YAML at line 3, column 3: duplicate key "max_qos"'


def test_yaml_merge_keys_still_work(tmp_path):
    text = "server: {tcp: {plain: {<<: {max_connections: 5, addr: ':1'}, addr: ':2'}}}\n"
    cfg = load_text(tmp_path, text)
    assert (cfg.server.tcp.plain.addr, cfg.server.tcp.plain.max_connections) == (":2", 5)


@pytest.mark.parametrize(
    ("text", "got"), [("[1, 2]\n", "a list"), ("42\n", "42"), ("hi\n", '"hi"')]
)
def test_top_level_must_be_a_mapping(tmp_path, text, got):
    path = write(tmp_path, text)
    assert str(error_of(tmp_path, text)) == (
        f"{path}: the top level must be a mapping of sections "
        f"(server, broker, session, log, storage, ratelimit, cluster, auth, webhook, queue, "
        f"queues), got {got}"
    )


# -- durations, sizes, addresses, enums --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (0.5, 0.5),
        (0, 0.0),
        ("45", 45.0),
        ("100ms", 0.1),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("1s500ms", 1.5),
        (" 10s ", 10.0),
    ],
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "s", "10 s", "1d", "-5s", "5sec", "1h 30m", "ms10", True, None, [1]]
)
def test_invalid_durations(value):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize("seconds", [0.0, 60.0, 0.1, 1.5, 0.0015, 5400.0, 0.003, 123456.789])
def test_duration_format_round_trips(seconds):
    text = cfgmod.format_duration(seconds)
    assert parse_duration(text) == seconds


def test_duration_formats():
    assert [cfgmod.format_duration(s) for s in (60.0, 0.1, 1.5, 0.0015)] == [
        "60s",
        "100ms",
        "1500ms",
        "0.0015s",
    ]


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("2048", 2048),
        ("100B", 100),
        ("512KB", 512 * 1024),
        ("512kb", 512 * 1024),
        ("10MB", 10 * 1024**2),
        ("1GB", 1024**3),
        ("1 GiB", 1024**3),
        ("64K", 64 * 1024),
        ("1.5KB", 1536),
    ],
)
def test_sizes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "KB", "10XB", "1.1B", "0.1KB", "-1KB", -1, True, 1.5, None])
def test_invalid_sizes(value):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(value)


@pytest.mark.parametrize(
    ("addr", "parsed"),
    [
        (":1883", ("", 1883)),
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("0.0.0.0:8883", ("0.0.0.0", 8883)),
        ("[::1]:1883", ("::1", 1883)),
        ("[::]:1", ("::", 1)),
        ("localhost:1883", ("localhost", 1883)),
        ("mqtt.example.com:65535", ("mqtt.example.com", 65535)),
        ("", None),
    ],
)
def test_addresses(addr, parsed):
    assert parse_addr(addr) == parsed


@pytest.mark.parametrize(
    "addr",
    [
        "1883",
        "localhost",
        ":",
        ":0",
        ":65536",
        ":http",
        ":-1",
        "::1:1883",
        "[::1]",
        "[nothost]:1883",
        "[127.0.0.1]:1883",
        "300.1.1.1:1883",
        "under_score:1883",
        "-bad.example:1883",
        "a b:1883",
        "host:18 83",
        None,
        1883,
    ],
)
def test_invalid_addresses(addr):
    with pytest.raises(ValueError, match="invalid address"):
        parse_addr(addr)


def test_parse_addr_is_exported():
    assert "parse_addr" in cfgmod.__all__


@pytest.mark.parametrize(
    ("written", "level"),
    [
        ("debug", "debug"),
        ("INFO", "info"),
        ("Warning", "warning"),
        ("warn", "warning"),
        ("error", "error"),
    ],
)
def test_log_level_enum_with_alias(tmp_path, written, level):
    assert load_text(tmp_path, f"log: {{level: {written}}}\n").log.level == level


def test_enum_values_are_normalised(tmp_path):
    cfg = load_text(tmp_path, "storage: {type: LMDB}\nsession: {offline_queue_policy: Reject}\n")
    assert (cfg.storage.type, cfg.session.offline_queue_policy) == ("lmdb", "reject")


def test_bool_kind_accepts_only_yaml_booleans():
    assert Bool().parse(True) is True
    assert Bool().parse(False) is False
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="expected true or false"):
            Bool().parse(bad)


# -- the extension mechanism -------------------------------------------------------------------


@section
class _Listener(Section):
    addr: str = setting(Addr(), ":9000", "Address.")
    idle: float = setting(Duration(min_exclusive=True), "5s", "Idle timeout.")


@section
class _Server(Section):
    plain: _Listener = subsection(_Listener, "Plain listener.")
    tls: _Listener = subsection(_Listener, "TLS listener, off by default.", addr="")
    enabled: bool = setting(Bool(), False, "Switch.")
    name: str = setting(Str(allow_empty=True), "", "A name.")
    level: str = setting(Enum(("a", "b")), "a", "A choice.")
    size: int = setting(Size(max=2048), "1KB", "A size.")
    count: int = setting(Int(), 3, "A count.")


def test_subsection_defaults_override_per_instance():
    server = _Server()
    assert (server.plain.addr, server.tls.addr) == (":9000", "")
    assert server.tls.idle == 5.0
    assert server.size == 1024
    listed = {e.key: e.default for e in iter_schema(_Server) if isinstance(e, SettingInfo)}
    assert listed["plain.addr"] == ":9000"
    assert listed["tls.addr"] == ""


def test_schema_walk_lists_sections_before_their_settings():
    keys = [(type(e).__name__, e.key) for e in iter_schema(_Server)]
    assert keys[:4] == [
        ("SectionInfo", "plain"),
        ("SettingInfo", "plain.addr"),
        ("SettingInfo", "plain.idle"),
        ("SectionInfo", "tls"),
    ]


def test_bad_defaults_are_rejected_when_declaring():
    with pytest.raises(TypeError, match="invalid default"):
        setting(Int(0, 2), 3, "Out of range.")
    with pytest.raises(TypeError, match="has no setting 'port'"):
        subsection(_Listener, "doc", port=1)
    with pytest.raises(TypeError, match="invalid default"):
        subsection(_Listener, "doc", addr="nope")


def test_section_fields_must_be_declared_with_setting_or_subsection():
    with pytest.raises(TypeError, match=r"_Bad\.plain: declare it with setting\(\)"):

        @section
        class _Bad(Section):
            plain: int = 5


def test_kind_descriptions():
    assert Int(0, 2).describe() == "integer, from 0 to 2"
    assert Int(min=0).describe() == "integer, >= 0"
    assert Int().describe() == "integer"
    assert Duration(min_exclusive=True).describe() == "duration, > 0"
    assert Duration().describe() == "duration, >= 0"
    assert Duration(min=1, max=60).describe() == "duration, >= 1s and <= 60s"
    assert Size(1024, 2048).describe() == "size, from 1024 to 2048 bytes"
    assert Enum(("x", "y"), {"z": "y"}).describe() == "one of `x`, `y` (`z` = `y`)"


def test_schema_has_exactly_the_expected_keys():
    assert [s.key for s in iter_settings()] == list(_flatten(EXPECTED_DEFAULTS))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


# -- docs and example cannot drift -------------------------------------------------------------


def _doc_rows() -> dict[str, str]:
    """Key -> default cell of every reference-table row in docs/configuration.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| `([a-z_.]+)` \| [^|]+ \| `([^`]*)` \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_docs_list_every_key_with_its_default():
    rows = _doc_rows()
    for s in iter_settings():
        assert s.key in rows, f"{s.key} is not documented in {DOCS.name}"
        assert yaml.safe_load(rows[s.key]) == s.default, f"{s.key}: documented default differs"
    assert set(rows) == {s.key for s in iter_settings()}, "docs list keys the schema lacks"


def test_docs_defaults_match_the_real_defaults():
    rows = _doc_rows()
    for key, default in _flatten(EXPECTED_DEFAULTS).items():
        assert yaml.safe_load(rows[key]) == default, key


def test_docs_reference_is_generated_from_the_current_schema():
    text = DOCS.read_text()
    assert cfgmod.render_docs_reference() in text, (
        "docs/configuration.md is out of date: run `.venv/bin/python -m fluxmq.config --write`"
    )


def test_example_is_generated_from_the_current_schema():
    assert EXAMPLE.read_text() == cfgmod.render_example(), (
        "examples/fluxmq.yaml is out of date: run `.venv/bin/python -m fluxmq.config --write`"
    )


def test_example_has_every_key_at_its_default():
    data = yaml.safe_load(EXAMPLE.read_text())
    assert _flatten(data).keys() == _flatten(EXPECTED_DEFAULTS).keys()
    assert load_config(EXAMPLE) == Config()
    assert load_config(EXAMPLE).to_dict() == EXPECTED_DEFAULTS


def test_replace_docs_reference_rewrites_only_the_marked_block():
    doc = f"intro\n{cfgmod.DOCS_BEGIN}\nstale\n{cfgmod.DOCS_END}\noutro\n"
    assert (
        cfgmod.replace_docs_reference(doc) == "intro\n" + cfgmod.render_docs_reference() + "outro\n"
    )
    with pytest.raises(ValueError, match="markers"):
        cfgmod.replace_docs_reference("no markers")


def test_section_info_is_listed_for_every_section():
    sections = [e.key for e in iter_schema() if isinstance(e, SectionInfo)]
    assert sections == [
        "server",
        "server.tcp",
        "server.tcp.plain",
        "server.tcp.tls",
        "server.tcp.mtls",
        "server.websocket",
        "server.websocket.plain",
        "server.websocket.tls",
        "server.websocket.mtls",
        "server.http",
        "server.http.plain",
        "server.http.tls",
        "server.http.mtls",
        "server.coap",
        "server.coap.plain",
        "server.coap.dtls",
        "server.coap.mdtls",
        "server.api",
        "broker",
        "session",
        "log",
        "storage",
        "ratelimit",
        "ratelimit.connection",
        "ratelimit.message",
        "ratelimit.subscribe",
        "cluster",
        "auth",
        "auth.http",
        "webhook",
        "webhook.defaults",
        "webhook.defaults.retry",
        "webhook.defaults.circuit_breaker",
        "queue",
        "queue.defaults",
        "queue.defaults.retry",
        "queue.defaults.dlq",
        "queue.defaults.retention",
        "queue.defaults.limits",
    ]
