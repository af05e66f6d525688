"""The server's signing secret, kept in the data directory."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from townhall.config import Config

logger = logging.getLogger(__name__)

SECRET_FILE = "secret.key"
SECRET_BYTES = 32


def load_or_create_secret(data_dir: Path) -> bytes:
    """Read ``data_dir/secret.key``, or create it (32 random bytes as hex, mode 0600).

    ``data_dir`` is created if it does not exist. The returned bytes are the hex text of the
    file, so the same key can be pasted into ``TOWNHALL_SECRET_KEY`` on another node.
    """
    path = data_dir / SECRET_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(SECRET_BYTES)
    # Write a private temporary file, then link it into place: the link fails if another
    # process got there first, and no reader ever sees a half-written key.
    tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
        os.link(tmp, path)
    except FileExistsError:
        return _read(path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("created a new signing secret in %s", path)
    return key.encode("ascii")


def secret_for(config: Config) -> bytes:
    """The signing secret: ``config.secret_key`` if set, else the data directory's file."""
    if config.secret_key:
        return config.secret_key.encode("utf-8")
    return load_or_create_secret(config.data_dir)


def _read(path: Path) -> bytes:
    key = path.read_text(encoding="ascii").strip()
    if not key:
        raise ValueError(f"{path} is empty; delete it to create a new secret")
    return key.encode("ascii")
