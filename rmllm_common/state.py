"""The local state directory, and secrets generated into it on first run.

Embedded defaults keep a fresh clone runnable with no configuration: the vault
generates its seed, and the first service to start generates the service
credential, as 0600 files in a 0700 directory (``RMLLM_DATA_DIR``, default
``$XDG_STATE_HOME/realmultillm`` or ``~/.local/state/realmultillm``). A file is
created atomically (written aside, then hard-linked into place), so two processes
starting together agree on one value.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from rmllm_common import randomsecret

SERVICE_TOKEN_FILE = "service_token"  # noqa: S105 - a file name, not a secret
SEED_FILE = "vault_seed"
SERVICE_TOKEN_PREFIX = "rms_"  # noqa: S105 - a prefix, not a secret


def default_data_dir(env: Mapping[str, str]) -> Path:
    """``RMLLM_DATA_DIR``, else the XDG state directory."""
    if env.get("RMLLM_DATA_DIR"):
        return Path(env["RMLLM_DATA_DIR"]).expanduser()
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "realmultillm"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed; refuse one that other users can reach.

    An existing directory is never chmodded behind the operator's back (it may be
    shared on purpose, or the wrong one): a ``PermissionError`` says what to run.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"the data directory {path} is open to other users (mode {mode:o}); it holds the seed, the "
            f"service credential and the database: run: chmod 700 {path}"
        )
    return path


def read_secret_file(path: Path) -> str:
    """A secret file's content (stripped); refuses a file readable by others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")
    return path.read_text().strip()


def read_or_create_secret(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The secret in ``path``, creating it (0600) with ``make()`` if absent.

    Returns ``(value, created)``.
    """
    if path.exists():
        return read_secret_file(path), False
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(make() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    return read_secret_file(path), created


def new_service_token() -> str:
    """A random service credential: ``rms_`` and 32 random bytes as base64url (256 bits).

    Drawn again in the (below one in a million) case that the policy would refuse it.
    """
    while True:
        candidate = SERVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            check_service_token(candidate, "the generated service credential")
        except randomsecret.WeakSecret:
            continue
        return candidate


def check_service_token(token: str, name: str = "RMLLM_SERVICE_TOKEN") -> None:
    """Refuse a credential that is not 32+ random bytes as hex or base64 (``rms_`` prefix optional).

    The rule of ``rmllm_common.randomsecret``, the seed's: ``'a' * 32`` or a passphrase
    is refused with the command that generates a good one.
    """
    randomsecret.check(token, name, prefix=SERVICE_TOKEN_PREFIX)


def service_token(env: Mapping[str, str], data_dir: Path) -> tuple[str, bool]:
    """The service credential: ``RMLLM_SERVICE_TOKEN``, else ``RMLLM_SERVICE_TOKEN_FILE``,
    else the data directory's generated file. Returns ``(token, generated_now)``.

    Both services read it here, and both refuse a weak one (``randomsecret.WeakSecret``).
    """
    if env.get("RMLLM_SERVICE_TOKEN"):
        token, created, name = env["RMLLM_SERVICE_TOKEN"].strip(), False, "RMLLM_SERVICE_TOKEN"
    elif env.get("RMLLM_SERVICE_TOKEN_FILE"):
        path = Path(env["RMLLM_SERVICE_TOKEN_FILE"]).expanduser()
        token, created, name = read_secret_file(path), False, f"RMLLM_SERVICE_TOKEN_FILE ({path})"
    else:
        path = data_dir / SERVICE_TOKEN_FILE
        token, created = read_or_create_secret(path, new_service_token)
        name = f"the service credential file {path}"
    check_service_token(token, name)
    return token, created
