"""The `fluxmq` command line (run as a real subprocess) and the logging set-up it uses."""

from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fluxmq
from fluxmq.cli import main
from fluxmq.log import get_logger, setup_logging

ROOT = Path(__file__).resolve().parent.parent


def fluxmq_cmd(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `python -m fluxmq ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "fluxmq", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- check-config ------------------------------------------------------------------------------


def test_check_config_ok(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("broker:\n  max_qos: 1\nlog:\n  level: warn\n")
    res = fluxmq_cmd("check-config", str(path), cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{path}: ok\n", "")


def test_check_config_of_the_example(tmp_path):
    example = ROOT / "examples" / "fluxmq.yaml"
    res = fluxmq_cmd("check-config", str(example), cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, f"{example}: ok\n")


def test_check_config_bad_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("broker:\n  max_qos: 3\n")
    res = fluxmq_cmd("check-config", str(path), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == (
        "fluxmq: config error: broker.max_qos: expected an integer from 0 to 2, got 3\n"
    )


def test_check_config_unknown_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("server:\n  tcp:\n    plain:\n      adr: ':1883'\n")
    res = fluxmq_cmd("check-config", str(path), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr == (
        "fluxmq: config error: unknown key server.tcp.plain.adr "
        "(did you mean server.tcp.plain.addr?)\n"
    )


def test_check_config_missing_file(tmp_path):
    res = fluxmq_cmd("check-config", "missing.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr == "fluxmq: config error: config file not found: missing.yaml\n"


def test_check_config_yaml_syntax_error(tmp_path):
    (tmp_path / "broken.yaml").write_text("broker: {max_qos: 1\n")
    res = fluxmq_cmd("check-config", "broken.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith(
        "fluxmq: config error: broken.yaml: invalid YAML at line 2, column 1: "
    )
    assert "Traceback" not in res.stderr


def test_check_config_needs_a_file(tmp_path):
    res = fluxmq_cmd("check-config", cwd=tmp_path)
    assert res.returncode == 2
    assert "the following arguments are required: FILE" in res.stderr


# -- serve: configuration errors stop it before anything starts --------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("broker:\n  max_qos: 3\n", "broker.max_qos: expected an integer from 0 to 2, got 3"),
        (
            "log: {level: loud}\n",
            'log.level: expected one of debug, info, warning, error, got "loud"',
        ),
        ("brokr: {}\n", "unknown key brokr (did you mean broker?)"),
    ],
)
def test_serve_with_bad_config_exits_2_without_starting(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = fluxmq_cmd("serve", "--config", str(path), cwd=tmp_path, timeout=20)
    assert res.returncode == 2
    assert res.stderr == f"fluxmq: config error: {message}\n"
    assert res.stdout == ""


def test_serve_with_missing_config_file_exits_2(tmp_path):
    res = fluxmq_cmd("serve", "-c", "nope.yaml", cwd=tmp_path, timeout=20)
    assert (res.returncode, res.stderr) == (
        2,
        "fluxmq: config error: config file not found: nope.yaml\n",
    )


def test_serve_rejects_an_unknown_log_level(tmp_path):
    res = fluxmq_cmd("serve", "--log-level", "loud", cwd=tmp_path, timeout=20)
    assert res.returncode == 2
    assert "argument --log-level: invalid choice: 'loud'" in res.stderr


# -- version, help, usage errors ---------------------------------------------------------------


def test_version(tmp_path):
    res = fluxmq_cmd("version", cwd=tmp_path)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0] == f"fluxmq {fluxmq.__version__}" == "fluxmq 0.1.0"
    assert lines[1] == f"Python {platform.python_version()} ({platform.python_implementation()})"
    names = [line.split()[0] for line in lines[2:]]
    assert names == ["uvloop", "Cython"]  # both are installed in the dev environment
    assert all(re.fullmatch(r"\S+ \d+\.\d+\S*", line) for line in lines[2:])


def test_dash_dash_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "fluxmq 0.1.0\n"


def test_help_lists_the_commands(tmp_path):
    res = fluxmq_cmd("--help", cwd=tmp_path)
    assert res.returncode == 0
    for command in ("serve", "check-config", "version"):
        assert re.search(rf"^\s+{command}\b", res.stdout, re.MULTILINE), command


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("serve", "--log-level LEVEL"),
        ("check-config", "FILE"),
        ("version", "usage: fluxmq version"),
    ],
)
def test_per_command_help(capsys, command, expected):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fluxmq {command}")
    assert expected in out


def test_unknown_command_exits_2(tmp_path):
    res = fluxmq_cmd("frobnicate", cwd=tmp_path)
    assert res.returncode == 2
    assert "invalid choice: 'frobnicate'" in res.stderr


def test_no_command_exits_2(capsys):
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_main_returns_exit_codes_in_process(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("")
    bad = tmp_path / "bad.yaml"
    bad.write_text("session: {offline_queue_policy: drop}\n")
    assert main(["check-config", str(good)]) == 0
    assert main(["check-config", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == f"{good}: ok\n"
    assert err == (
        "fluxmq: config error: session.offline_queue_policy: "
        'expected one of evict, reject, got "drop"\n'
    )


# -- logging -----------------------------------------------------------------------------------


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Restore the `fluxmq` and `asyncio` loggers after a test reconfigures them."""
    saved = {}
    for name in ("fluxmq", "asyncio"):
        lg = logging.getLogger(name)
        saved[name] = (list(lg.handlers), lg.level, lg.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) (\S+): (.*)"
)


def test_text_format_with_fields(clean_logging, capsys):
    setup_logging("info", "text")
    get_logger("broker").info(
        "client connected", extra={"client_id": "c-1", "remote": "127.0.0.1:5000", "n": 3}
    )
    err = capsys.readouterr().err
    m = TEXT_LINE.fullmatch(err.rstrip("\n"))
    assert m, err
    assert m.groups() == (
        "INFO",
        "fluxmq.broker",
        "client connected client_id=c-1 remote=127.0.0.1:5000 n=3",
    )


def test_text_format_quotes_awkward_values(clean_logging, capsys):
    setup_logging("debug", "text")
    get_logger("x").debug("m", extra={"a": "two words", "b": "", "c": 'q"uote', "d": b"raw"})
    line = capsys.readouterr().err.rstrip("\n")
    assert line.endswith(' DEBUG fluxmq.x: m a="two words" b="" c="q\\"uote" d=raw')


def test_text_format_appends_a_traceback(clean_logging, capsys):
    setup_logging("info", "text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("x").exception("failed", extra={"k": 1})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(" ERROR fluxmq.x: failed k=1")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


def test_json_format(clean_logging, capsys):
    setup_logging("info", "json")
    get_logger("fluxmq.broker").warning(
        "slow %s", "client", extra={"client_id": "c-1", "remote": ("127.0.0.1", 5000), "ts": 1}
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    obj = json.loads(err)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj.pop("ts"))
    assert obj == {
        "level": "WARNING",
        "logger": "fluxmq.broker",
        "msg": "slow client",
        "client_id": "c-1",
        "remote": ["127.0.0.1", 5000],
        "ts_": 1,
    }


def test_json_format_handles_odd_values_and_tracebacks(clean_logging, capsys):
    setup_logging("info", "json")
    try:
        raise ValueError("bad")
    except ValueError:
        get_logger("x").error("oops", exc_info=True, extra={"big": 2**70, "obj": object})
    obj = json.loads(capsys.readouterr().err)
    assert obj["msg"] == "oops"
    assert obj["big"] == repr(2**70)
    assert obj["exc"].endswith("ValueError: bad")


def test_level_filtering_and_warn_alias(clean_logging, capsys):
    setup_logging("warn", "text")
    log = get_logger("x")
    log.info("hidden")
    log.warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert " WARNING fluxmq.x: shown" in err


def test_setup_logging_is_idempotent(clean_logging, capsys):
    setup_logging("info", "text")
    setup_logging("info", "text")
    setup_logging("debug", "json")
    assert len(logging.getLogger("fluxmq").handlers) == 1
    get_logger("x").debug("once")
    err = capsys.readouterr().err
    assert err.count("once") == 1
    assert json.loads(err)["level"] == "DEBUG"


def test_asyncio_errors_use_the_same_handler(clean_logging, capsys):
    setup_logging("debug", "json")
    asyncio_logger = logging.getLogger("asyncio")
    assert asyncio_logger.level == logging.WARNING
    asyncio_logger.debug("noise")
    asyncio_logger.error("Task exception was never retrieved")
    obj = json.loads(capsys.readouterr().err)
    assert (obj["logger"], obj["msg"]) == ("asyncio", "Task exception was never retrieved")


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "text"), ("info", "xml")])
def test_setup_logging_rejects_bad_arguments(clean_logging, level, fmt):
    with pytest.raises(ValueError, match="unknown log"):
        setup_logging(level, fmt)


def test_get_logger_names():
    assert get_logger("broker").name == "fluxmq.broker"
    assert get_logger("fluxmq.mqtt.codec").name == "fluxmq.mqtt.codec"
    assert get_logger("fluxmq").name == "fluxmq"
    assert get_logger("fluxmqx").name == "fluxmq.fluxmqx"
