from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from townhall.auth.secret import load_or_create_secret
from townhall.auth.tokens import Grant, verify
from townhall.cli import main
from townhall.config import Config


@pytest.fixture(autouse=True)
def no_townhall_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TOWNHALL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def create_room(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str) -> str:
    code, out, _ = run(capsys, data_dir, "room", "create", name)
    assert code == 0
    return out.split("\t")[0]


def grant_of(link: str, data_dir: Path) -> Grant:
    token = parse_qs(urlsplit(link).query)
    value = token.get("t") or token["admin"]
    return verify(load_or_create_secret(data_dir), value[0], time.time())


def test_room_create_prints_the_new_rooms_id_and_name(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = run(capsys, data_dir, "room", "create", "Board meeting")
    assert (code, err) == (0, "")
    assert re.fullmatch(r"[0-9a-f]{32}\tBoard meeting\n", out)
    assert (data_dir / "townhall.sqlite3").exists()


def test_room_list_shows_every_room_by_name(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    board = create_room(capsys, data_dir, "Board")
    assembly = create_room(capsys, data_dir, "Assembly")
    code, out, _ = run(capsys, data_dir, "room", "list")
    assert code == 0
    assert out == f"{assembly}\tAssembly\n{board}\tBoard\n"


def test_room_list_of_a_fresh_server_prints_nothing(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    assert run(capsys, data_dir, "room", "list") == (0, "", "")


def test_creating_a_room_whose_name_is_taken_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    create_room(capsys, data_dir, "Board")
    code, out, err = run(capsys, data_dir, "room", "create", "Board")
    assert (code, out) == (2, "")
    assert err == "townhall: room 'Board' already exists\n"


def test_room_delete_by_name_or_id_removes_the_room(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    board = create_room(capsys, data_dir, "Board")
    other = create_room(capsys, data_dir, "Other")
    code, out, _ = run(capsys, data_dir, "room", "delete", "Board")
    assert (code, out) == (0, f"deleted {board}\tBoard\n")
    assert run(capsys, data_dir, "room", "delete", other)[0] == 0
    assert run(capsys, data_dir, "room", "list") == (0, "", "")


def test_deleting_an_unknown_room_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    assert run(capsys, data_dir, "room", "delete", "Nowhere") == (2, "", "townhall: unknown room\n")


def test_invite_prints_only_a_link_whose_token_grants_the_role_in_that_room(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    room_id = create_room(capsys, data_dir, "Board")
    code, out, err = run(capsys, data_dir, "invite", "Board", "--role", "speaker")
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    link = out.strip()
    assert link.startswith(f"http://localhost:8080/r/{room_id}?t=")
    grant = grant_of(link, data_dir)
    assert (grant.room_id, grant.role) == (room_id, "speaker")
    week = Config().invite_ttl
    assert abs(grant.expires_at - (time.time() + week)) < 5


def test_invite_by_room_id_with_a_ttl_expires_after_that_ttl(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    room_id = create_room(capsys, data_dir, "Board")
    code, out, _ = run(capsys, data_dir, "invite", room_id, "--role", "caption", "--ttl", "600")
    assert code == 0
    grant = grant_of(out.strip(), data_dir)
    assert (grant.room_id, grant.role) == (room_id, "caption")
    assert abs(grant.expires_at - (time.time() + 600)) < 5


def test_invite_link_uses_the_public_url_from_the_config_file(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "townhall.toml"
    config.write_text(f'public_url = "https://meet.example.org/"\ndata_dir = "{data_dir}"\n')
    room_id = create_room(capsys, data_dir, "Board")
    code = main(["--config", str(config), "invite", "Board", "--role", "host"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"https://meet.example.org/r/{room_id}?t=")


@pytest.mark.parametrize("role", ["admin", "king", "Host"])
def test_invite_for_a_role_that_is_not_a_meeting_role_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, role: str
) -> None:
    create_room(capsys, data_dir, "Board")
    code, out, err = run(capsys, data_dir, "invite", "Board", "--role", role)
    assert (code, out) == (2, "")
    assert err == (
        f"townhall: unknown role: {role!r} (choose from host, speaker, listener, caption)\n"
    )


def test_invite_to_an_unknown_room_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = run(capsys, data_dir, "invite", "Nowhere", "--role", "host")
    assert (code, out, err) == (2, "", "townhall: unknown room\n")


def test_invite_with_a_ttl_that_is_not_positive_fails(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    create_room(capsys, data_dir, "Board")
    code, out, err = run(capsys, data_dir, "invite", "Board", "--role", "host", "--ttl", "0")
    assert (code, out) == (2, "")
    assert err.startswith("townhall: --ttl must be a positive number")


def test_admin_link_carries_an_admin_token_for_every_room(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = run(capsys, data_dir, "admin-link")
    assert (code, err) == (0, "")
    assert out.startswith("http://localhost:8080/?admin=")
    grant = grant_of(out.strip(), data_dir)
    assert (grant.room_id, grant.role) == ("*", "admin")


def test_links_are_signed_with_the_configured_secret_key_when_there_is_one(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOWNHALL_SECRET_KEY", "shared-between-nodes")
    code, out, _ = run(capsys, data_dir, "admin-link")
    assert code == 0
    token = parse_qs(urlsplit(out.strip()).query)["admin"][0]
    assert verify(b"shared-between-nodes", token, time.time()).role == "admin"
    assert not (data_dir / "secret.key").exists()


def test_serve_hands_the_server_a_config_with_overrides_and_the_secret(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Config] = []
    app = types.ModuleType("townhall.server.app")
    app.serve = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "townhall.server.app", app)

    code, _, err = run(capsys, data_dir, "serve", "--host", "0.0.0.0", "--port", "8443")

    assert (code, err) == (0, "")
    [config] = seen
    assert (config.http_host, config.http_port, config.data_dir) == ("0.0.0.0", 8443, data_dir)
    assert config.secret_key.encode() == load_or_create_secret(data_dir)


def test_unknown_setting_in_the_config_file_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "townhall.toml"
    config.write_text("colour = 'red'\n")
    code = main(["--config", str(config), "room", "list"])
    assert (code, capsys.readouterr().err) == (2, "townhall: unknown setting(s): colour\n")


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: townhall" in capsys.readouterr().err


def test_installed_console_script_creates_and_lists_rooms(tmp_path: Path) -> None:
    script = shutil.which("townhall")
    if script is None:
        pytest.skip("the townhall console script is not installed (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWNHALL_")}
    data_dir = str(tmp_path / "data")

    created = subprocess.run(
        [script, "--data-dir", data_dir, "room", "create", "Assembly"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert (created.returncode, created.stderr) == (0, "")
    listed = subprocess.run(
        [script, "--data-dir", data_dir, "room", "list"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert listed.stdout == created.stdout
    assert created.stdout.endswith("\tAssembly\n")


def test_captions_token_prints_a_worker_token_for_every_room(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = run(capsys, data_dir, "captions-token", "--ttl", "120")
    assert (code, err) == (0, "")
    grant = verify(load_or_create_secret(data_dir), out.strip(), time.time())
    assert (grant.room_id, grant.role) == ("*", "caption")
    assert time.time() + 100 < grant.expires_at <= time.time() + 121
    assert run(capsys, data_dir, "captions-token", "--ttl", "0")[0] == 2


def test_room_create_with_captions_turns_them_on_and_the_list_says_so(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = run(capsys, data_dir, "room", "create", "Assembly", "--captions")
    assert (code, err) == (0, "")
    assert re.fullmatch(r"[0-9a-f]{32}\tAssembly\tcaptions\n", out)
    create_room(capsys, data_dir, "Quiet")
    code, out, _ = run(capsys, data_dir, "room", "list")
    assert [line.split("\t")[1:] for line in out.splitlines()] == [
        ["Assembly", "captions"], ["Quiet"]]


def test_serve_starts_the_captions_worker_unless_told_not_to(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Config] = []
    app = types.ModuleType("townhall.server.app")
    app.serve = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "townhall.server.app", app)

    assert run(capsys, data_dir, "serve")[0] == 0
    assert run(capsys, data_dir, "serve", "--no-captions")[0] == 0
    monkeypatch.setenv("TOWNHALL_CAPTIONS_WORKER", "false")
    monkeypatch.setenv("TOWNHALL_ASR_MODEL", "/models/whisper-small")
    assert run(capsys, data_dir, "serve")[0] == 0
    assert [c.captions_worker for c in seen] == [True, False, False]
    assert (seen[0].asr_model, seen[2].asr_model) == ("base", "/models/whisper-small")


def _serve_output(data_dir: Path, terminal: bool) -> str:
    """What ``townhall serve`` writes up to its media line, to a pipe or to a terminal."""
    env = {**os.environ, "TOWNHALL_DATA_DIR": str(data_dir), "TOWNHALL_HTTP_PORT": "0",
           "TOWNHALL_MEDIA_UDP_PORT": "0", "TOWNHALL_MEDIA_TCP_PORT": "0",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "townhall", "serve", "--no-captions"]
    if terminal:
        reader, writer = pty.openpty()
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=writer,
                                   stderr=subprocess.DEVNULL)
        os.close(writer)
    else:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert process.stdout is not None
        reader = process.stdout.fileno()
    text = ""
    deadline = time.monotonic() + 30
    try:
        while "Media:" not in text and time.monotonic() < deadline:
            chunk = os.read(reader, 4096)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    finally:
        process.terminate()
        process.wait(10)
        if terminal:
            os.close(reader)
    assert "townhall is running at" in text, text
    return text


def test_serve_prints_the_administrator_link_on_a_terminal_only(data_dir: Path) -> None:
    """Output that is not a terminal (a service's journal, a file) is kept: the link's token
    would let whoever reads it administer the server."""
    piped = _serve_output(data_dir, terminal=False)
    assert "?admin=" not in piped
    assert "`townhall admin-link` prints one" in piped
    shown = _serve_output(data_dir, terminal=True)
    [link] = re.findall(r"Administrator link \(valid \d+ h\): (\S+)", shown)
    grant = grant_of(link, data_dir)
    assert (grant.room_id, grant.role) == ("*", "admin")
