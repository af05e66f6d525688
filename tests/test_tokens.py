from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
from pathlib import Path

import pytest

from townhall.auth.secret import load_or_create_secret, secret_for
from townhall.auth.tokens import Grant, sign, verify
from townhall.config import Config
from townhall.errors import BadRequest, Unauthorized

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.75
ROOM = "3f2a9c0d4b8e4f1aa6c2d9e8b7f60123"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed(payload: object, secret: bytes = SECRET) -> str:
    body = _b64(json.dumps(payload).encode())
    return body + "." + _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


def test_signed_token_verifies_to_its_room_role_and_expiry() -> None:
    token = sign(SECRET, ROOM, "speaker", 3600, NOW)
    grant = verify(SECRET, token, NOW + 10)
    assert grant.room_id == ROOM
    assert grant.role == "speaker"
    assert grant.expires_at == 1_700_000_000 + 3600
    assert re.fullmatch(r"[0-9a-f]{16}", grant.token_id)
    assert grant.permissions == frozenset({"join", "publish", "chat", "raise-hand"})


def test_token_is_compact_url_safe_and_unpadded_with_the_documented_payload() -> None:
    token = sign(SECRET, ROOM, "listener", 60, NOW)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    body, signature = token.split(".")
    payload = json.loads(_unb64(body))
    assert set(payload) == {"r", "o", "e", "i"}
    assert (payload["r"], payload["o"], payload["e"]) == (ROOM, "listener", 1_700_000_060)
    expected = hmac.new(SECRET, body.encode(), hashlib.sha256).digest()
    assert _unb64(signature) == expected
    assert len(token) < 200  # fits in a link that people paste


def test_each_token_has_its_own_id() -> None:
    ids = {verify(SECRET, sign(SECRET, ROOM, "host", 60, NOW), NOW).token_id for _ in range(20)}
    assert len(ids) == 20


def test_admin_token_for_every_room_grants_the_admin_permissions() -> None:
    grant = verify(SECRET, sign(SECRET, "*", "admin", 60, NOW), NOW)
    assert grant == Grant(
        room_id="*", role="admin", token_id=grant.token_id, expires_at=1_700_000_060
    )
    assert grant.permissions == frozenset({"admin", "invite"})


def test_token_is_valid_until_the_second_before_expiry_and_then_expired() -> None:
    token = sign(SECRET, ROOM, "host", 100, 1000.0)
    assert verify(SECRET, token, 1099.999).expires_at == 1100
    with pytest.raises(Unauthorized) as info:
        verify(SECRET, token, 1100.0)
    assert str(info.value) == "token expired"


def test_expired_token_is_refused_with_a_clear_message() -> None:
    token = sign(SECRET, ROOM, "listener", 60, NOW)
    with pytest.raises(Unauthorized, match=r"^token expired$"):
        verify(SECRET, token, NOW + 3600)


def test_token_signed_with_another_secret_has_an_invalid_signature() -> None:
    token = sign(b"another secret", ROOM, "host", 60, NOW)
    with pytest.raises(Unauthorized) as info:
        verify(SECRET, token, NOW)
    assert str(info.value) == "token signature invalid"


def test_token_whose_payload_was_changed_has_an_invalid_signature() -> None:
    token = sign(SECRET, ROOM, "listener", 60, NOW)
    body, signature = token.split(".")
    payload = json.loads(_unb64(body))
    payload["o"] = "host"
    forged = _b64(json.dumps(payload, separators=(",", ":")).encode()) + "." + signature
    with pytest.raises(Unauthorized, match=r"^token signature invalid$"):
        verify(SECRET, forged, NOW)


def test_forged_token_does_not_reveal_whether_it_expired() -> None:
    token = sign(b"another secret", ROOM, "host", 60, NOW)
    with pytest.raises(Unauthorized, match=r"^token signature invalid$"):
        verify(SECRET, token, NOW + 3600)


def test_signature_with_a_second_spelling_of_the_same_bytes_is_refused() -> None:
    token = sign(SECRET, ROOM, "host", 60, NOW)
    body, signature = token.split(".")
    # 32 bytes take 43 characters; the last one carries two unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    respelled = signature[:-1] + alphabet[last ^ 1]
    assert _unb64(respelled) == _unb64(signature)
    with pytest.raises(Unauthorized, match=r"^token signature invalid$"):
        verify(SECRET, body + "." + respelled, NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        ".abc",
        "abc.",
        "abc=.def",
        "ab c.def",
        "äbc.def",
        "abc.defgh",  # a signature of 5 characters is no base64 at all
        "a" * 2000 + ".abc",
    ],
)
def test_malformed_token_is_refused_as_malformed(token: str) -> None:
    with pytest.raises(Unauthorized) as info:
        verify(SECRET, token, NOW)
    assert str(info.value) == "token malformed"


@pytest.mark.parametrize(
    "payload",
    [
        ["r", "o"],
        {"r": ROOM, "o": "host", "e": "soon", "i": "00"},
        {"r": ROOM, "o": "king", "e": 2_000_000_000, "i": "00"},
        {"r": "", "o": "host", "e": 2_000_000_000, "i": "00"},
        {"o": "host", "e": 2_000_000_000, "i": "00"},
        {"r": ROOM, "o": "host", "e": True, "i": "00"},
    ],
)
def test_correctly_signed_token_with_a_bad_payload_is_malformed(payload: object) -> None:
    with pytest.raises(Unauthorized, match=r"^token malformed$"):
        verify(SECRET, _signed(payload), NOW)


def test_correctly_signed_token_that_is_not_json_is_malformed() -> None:
    body = _b64(b"not json")
    token = body + "." + _b64(hmac.new(SECRET, body.encode(), hashlib.sha256).digest())
    with pytest.raises(Unauthorized, match=r"^token malformed$"):
        verify(SECRET, token, NOW)


def test_signing_for_an_unknown_role_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"^unknown role: 'king'$"):
        sign(SECRET, ROOM, "king", 60, NOW)


@pytest.mark.parametrize("ttl", [0, -5])
def test_signing_with_a_ttl_that_is_not_positive_is_a_bad_request(ttl: int) -> None:
    with pytest.raises(BadRequest, match="ttl must be positive"):
        sign(SECRET, ROOM, "host", ttl, NOW)


def test_secret_is_created_once_as_private_hex_in_a_new_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    secret = load_or_create_secret(data_dir)
    path = data_dir / "secret.key"
    assert re.fullmatch(rb"[0-9a-f]{64}", secret)
    assert path.read_text().strip() == secret.decode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(data_dir) == secret
    assert sorted(p.name for p in data_dir.iterdir()) == ["secret.key"]


def test_secrets_of_two_data_dirs_differ(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_empty_secret_file_is_an_error_not_an_empty_key(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_or_create_secret(tmp_path)


def test_configured_secret_key_wins_over_the_data_dir(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", secret_key="from-config")
    assert secret_for(config) == b"from-config"
    assert not (tmp_path / "data").exists()
    assert secret_for(Config(data_dir=tmp_path / "data")) == load_or_create_secret(
        tmp_path / "data"
    )
