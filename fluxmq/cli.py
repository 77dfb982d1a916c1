"""The `fluxmq` command: `serve`, `check-config`, `passwd`, `version`.

Each sub-command is a `_Command`: a function that adds its argparse sub-parser and a function
that runs it and returns the exit code. Adding one (e.g. `passwd`) is one more entry in
`COMMANDS`. Exit codes: 0 success, 2 usage or configuration error, otherwise what `serve`'s
broker returns.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

from fluxmq import __version__
from fluxmq.config import Config, ConfigError, load_config

__all__ = ["COMMANDS", "build_parser", "main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONFIG = 2
LOG_LEVELS = ("debug", "info", "warning", "warn", "error")


def _config_error(err: ConfigError) -> int:
    """Report a configuration error the same way for every command."""
    print(f"fluxmq: config error: {err}", file=sys.stderr)
    return EXIT_CONFIG


# -- serve -------------------------------------------------------------------------------------


def _add_serve(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker until SIGINT or SIGTERM. Without --config, every setting "
        "has its default (MQTT on :1883).",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: none)")
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        choices=LOG_LEVELS,
        type=str.lower,
        help="override log.level: debug, info, warning (warn) or error",
    )
    return p


def _serve(args: argparse.Namespace) -> int:
    """Load the config, set up logging, and run the broker until it shuts down."""
    overrides = {"log.level": args.log_level} if args.log_level else None
    try:
        cfg: Config = load_config(args.config, overrides)
    except ConfigError as err:
        return _config_error(err)
    from fluxmq.log import setup_logging

    setup_logging(cfg.log.level, cfg.log.format)
    try:
        from fluxmq.app import run
    except ModuleNotFoundError as err:
        if err.name != "fluxmq.app":
            raise
        print("fluxmq: serve is not available in this build (no fluxmq.app)", file=sys.stderr)
        return 1
    try:
        return run(cfg, args.config, overrides)
    except KeyboardInterrupt:
        return 130


# -- check-config ------------------------------------------------------------------------------


def _add_check_config(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file: print 'FILE: ok' and exit 0, or print the first "
        "problem and exit 2.",
    )
    p.add_argument("file", metavar="FILE", help="YAML config file")
    return p


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as err:
        return _config_error(err)
    print(f"{args.file}: ok")
    return EXIT_OK


# -- passwd ------------------------------------------------------------------------------------


def _add_passwd(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "passwd",
        help="add, change or delete a user in a password file",
        description="Add or change USER in the Mosquitto-format password FILE (a $7$ "
        "PBKDF2-SHA512 hash, as mosquitto_passwd writes; FILE is created, mode 0600, if "
        "missing), or delete USER with -D. The password is read from the terminal (twice), "
        "or from the first line of standard input with --password-stdin. Send the broker "
        "SIGHUP (or POST /api/v1/reload) to use the new file.",
    )
    p.add_argument("-D", "--delete", action="store_true", help="delete USER")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.add_argument("file", metavar="FILE", help="password file")
    p.add_argument("user", metavar="USER", help="username")
    return p


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    import getpass

    if not sys.stdin.isatty():
        print("fluxmq: no terminal to read the password from (use --password-stdin)",
              file=sys.stderr)  # fmt: skip
        return None
    first = getpass.getpass("Password: ")
    if getpass.getpass("Reenter password: ") != first:
        print("fluxmq: passwords do not match", file=sys.stderr)
        return None
    return first


def _passwd(args: argparse.Namespace) -> int:
    from fluxmq.security.passwords import update_file

    password = None
    if not args.delete:
        password = _read_password(args)
        if password is None:
            return 1
        if not password:
            print("fluxmq: empty password", file=sys.stderr)
            return 1
    try:
        done = update_file(args.file, args.user, password)
    except (ValueError, OSError) as err:
        print(f"fluxmq: {err}", file=sys.stderr)
        return 1
    if not done:
        print(f"fluxmq: user {args.user} not found in {args.file}", file=sys.stderr)
        return 1
    return EXIT_OK


# -- version -----------------------------------------------------------------------------------


def _add_version(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser(
        "version",
        help="print the version",
        description="Print the FluxMQ version and the versions of Python, uvloop and Cython.",
    )


def version_lines() -> list[str]:
    """`fluxmq X.Y.Z`, then Python and, when installed, uvloop and Cython versions."""
    lines = [
        f"fluxmq {__version__}",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
    ]
    for dist in ("uvloop", "Cython"):
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return lines


def _version(args: argparse.Namespace) -> int:
    print("\n".join(version_lines()))
    return EXIT_OK


# -- the command table -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Command:
    name: str
    add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]


COMMANDS: tuple[_Command, ...] = (
    _Command("serve", _add_serve, _serve),
    _Command("check-config", _add_check_config, _check_config),
    _Command("passwd", _add_passwd, _passwd),
    _Command("version", _add_version, _version),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="fluxmq",
        description="FluxMQ: an MQTT 3.1.1/5.0 broker.",
        epilog="Run 'fluxmq COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fluxmq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        cmd.add_parser(sub).set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `fluxmq` command line; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return args._run(args)
