"""Mosquitto's password-file format: one `username:hash` line per user.

Two hash forms are read, as Mosquitto reads them:

- `$6$<salt>$<hash>`: SHA-512 of the password followed by the salt (Mosquitto 1.x),
- `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 (Mosquitto 2.x, `mosquitto_passwd`),

salt and hash in standard base64. `hash_password` writes the `$7$` form with 101 iterations and
a 12-byte salt, exactly as `mosquitto_passwd` does, so a file kept by `fluxmq passwd` works in
Mosquitto and the other way round. Empty lines and lines starting with `#` are kept and ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12
_DUMMY = "$7$101$AAAAAAAAAAAAAAAA$" + base64.b64encode(bytes(64)).decode()


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed hash: `kind` 6 or 7."""

    kind: int
    iterations: int
    salt: bytes
    digest: bytes

    def verify(self, password: bytes) -> bool:
        if self.kind == 6:
            got = hashlib.sha512(password + self.salt).digest()
        else:
            got = hashlib.pbkdf2_hmac(
                "sha512", password, self.salt, self.iterations, len(self.digest)
            )
        return hmac.compare_digest(got, self.digest)


def _b64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def parse_hash(text: str) -> PasswordHash:
    """A `$6$...` or `$7$...` hash; ValueError otherwise."""
    parts = text.split("$")
    try:
        if len(parts) == 4 and parts[0] == "" and parts[1] == "6":
            digest = _b64(parts[3])
            if len(digest) != 64:
                raise ValueError
            return PasswordHash(6, 0, _b64(parts[2]), digest)
        if len(parts) == 5 and parts[0] == "" and parts[1] == "7":
            iterations = int(parts[2])
            digest = _b64(parts[4])
            if iterations < 1 or not digest:
                raise ValueError
            return PasswordHash(7, iterations, _b64(parts[3]), digest)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        pass
    raise ValueError("not a $6$ or $7$ password hash")


def hash_password(
    password: str | bytes, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """The `$7$` hash `mosquitto_passwd` would write for `password`."""
    pw = password.encode("utf-8") if isinstance(password, str) else password
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", pw, salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class PasswordFile:
    """The users of a password file (read once; reload reads it again)."""

    def __init__(self, users: dict[str, PasswordHash], path: str = "") -> None:
        self.users = users
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PasswordFile:
        """Read and check the whole file; ValueError names the line of the first problem."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"password file not found: {os.fspath(path)}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read password file {os.fspath(path)}: {e}") from None
        users: dict[str, PasswordHash] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.rstrip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, hashed = line.partition(":")
            if not sep or not name:
                raise ValueError(f"{os.fspath(path)} line {n}: expected username:hash")
            try:
                users[name] = parse_hash(hashed.strip())
            except ValueError as e:
                raise ValueError(f"{os.fspath(path)} line {n} (user {name}): {e}") from None
        return cls(users, os.fspath(path))

    def verify(self, username: str, password: bytes | None) -> bool:
        """True if `username` is in the file and `password` is its password. An unknown user
        costs the same hashing as a known one (no timing hint of who exists)."""
        entry = self.users.get(username)
        if entry is None:
            parse_hash(_DUMMY).verify(password or b"")
            return False
        if password is None:
            return False
        return entry.verify(password)

    def __contains__(self, username: str) -> bool:
        return username in self.users

    def __len__(self) -> int:
        return len(self.users)


def update_file(path: str | os.PathLike[str], username: str, password: str | None) -> bool:
    """Add or change `username` (`password` given) or delete it (`password` None) in the file,
    keeping every other line as it was; the file is replaced atomically and created (mode
    0600) if missing. Returns False when deleting a user that is not there."""
    if not username or ":" in username:
        raise ValueError("a username must be non-empty and must not contain ':'")
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
        mode = p.stat().st_mode & 0o777
    except FileNotFoundError:
        if password is None:
            raise ValueError(f"password file not found: {os.fspath(path)}") from None
        lines, mode = [], 0o600
    out: list[str] = []
    found = False
    for line in lines:
        if line.partition(":")[0] == username and not line.lstrip().startswith("#"):
            found = True
            if password is not None:
                out.append(f"{username}:{hash_password(password)}")
            continue
        out.append(line)
    if password is not None and not found:
        out.append(f"{username}:{hash_password(password)}")
    if password is None and not found:
        return False
    fd, tmp = tempfile.mkstemp(prefix=".passwd-", dir=p.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(out) + ("\n" if out else ""))
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True
