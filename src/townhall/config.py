"""One frozen configuration, read from a TOML file and the environment.

Every setting has a default that works on a fresh machine: SQLite in the data directory, HTTP on
localhost, media on one UDP and one TCP port. Environment variables override the file; each is
``TOWNHALL_`` followed by the setting's name in capitals (``TOWNHALL_HTTP_PORT=8443``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TOWNHALL_"


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("townhall-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: The address people use to reach the server, used in invite links.
    public_url: str = ""
    #: SQLAlchemy URL; empty means SQLite in ``data_dir``.
    database_url: str = ""
    #: TLS for the HTTP server; both empty means plain HTTP (put a TLS proxy in front).
    tls_cert: str = ""
    tls_key: str = ""
    #: Addresses announced in ICE candidates; empty means every local IPv4 address.
    media_addresses: tuple[str, ...] = ()
    #: The one UDP port every participant's media uses (0: any free port).
    media_udp_port: int = 10000
    #: The ICE-TCP port for networks that block UDP (0: any free port, -1: off).
    media_tcp_port: int = 10000
    #: Measure how long each forwarded packet stays in the SFU (``/metrics`` histogram
    #: ``townhall_forwarding_delay_seconds``); costs a system call per received packet.
    measure_forwarding_delay: bool = False
    #: Make, protect and send forwarded copies in C (``sfu/native.py``) when that piece is
    #: built; false gives no transport a native route, so every copy is made in Python.
    media_native_send: bool = True
    #: How long an invite link stays valid, in seconds.
    invite_ttl: int = 7 * 24 * 3600
    #: How long a participant whose connection dropped keeps their place, in seconds.
    reconnect_grace: float = 30.0
    #: Largest WebSocket message accepted, in bytes.
    max_message_size: int = 262144
    #: Largest chat message, in characters.
    max_chat_length: int = 4000
    #: How many audio producers, the loudest, are forwarded when more are unmuted.
    loudest_audio: int = 3
    #: How many of those a participant in audio-only mode receives at once: one Opus stream
    #: keeps them under 64 kbit/s; with more, people talking over each other are all heard.
    audio_only_loudest: int = 1
    #: Ask browsers for RED audio (RFC 2198: each packet repeats the previous frame), forwarded
    #: to pages that can receive it; costs about twice the audio bit rate, rides over loss.
    audio_red: bool = True
    log_level: str = "INFO"
    secret_key: str = field(default="", repr=False)
    #: Start the captions worker as a child process of ``townhall serve``.
    captions_worker: bool = True
    #: Speech recognition model of the captions worker: a faster-whisper model name (downloaded on
    #: first use, so only on a connected machine) or the path of a model directory.
    asr_model: str = "base"
    #: Directory of the worker's CTranslate2 translation models (none: only the built-in pairs).
    translation_models: str | None = None
    #: Languages people speak here, as ISO 639-1 codes (``"en,ru,uk"``): the worker detects only
    #: these, which avoids misdetections on short utterances (none: any language).
    speech_languages: str | None = None

    def __post_init__(self) -> None:
        if self.loudest_audio < 1:
            raise ValueError("setting loudest_audio: at least one audio producer is forwarded")
        if self.audio_only_loudest < 1:
            raise ValueError("setting audio_only_loudest: an audio-only participant hears at "
                             "least one microphone")

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'townhall.sqlite3').resolve()}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = "localhost" if self.http_host in ("127.0.0.1", "0.0.0.0", "::") else self.http_host
        return f"{scheme}://{host}:{self.http_port}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
        """Read ``path`` (if given) and then ``env`` (default: ``os.environ``)."""
        values: dict[str, Any] = {}
        if path is not None:
            with path.open("rb") as f:
                values.update(tomllib.load(f))
        env = os.environ if env is None else env
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, raw in env.items():
            if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in fields:
                values[key[len(ENV_PREFIX):].lower()] = raw
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**{name: _coerce(name, fields[name].type, v) for name, v in values.items()})


def _coerce(name: str, kind: object, value: Any) -> Any:
    try:
        if kind in ("Path",):
            return Path(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return _bool(value)
        if kind == "tuple[str, ...]":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting {name}: {exc}") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not true or false: {value!r}")
