"""The ``townhall`` command: run the server, manage rooms, make invite and admin links.

Every command but ``serve`` opens the store directly (the same database the server uses), so it
works whether the server is running or not. A command that fails prints one line on stderr and
exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from townhall.auth.permissions import MEETING_ROLES
from townhall.auth.secret import secret_for
from townhall.auth.tokens import ANY_ROOM, sign
from townhall.config import Config
from townhall.errors import BadRequest, TownhallError
from townhall.languages import is_language
from townhall.minutes.transcript import FORMATS, write
from townhall.store import CaptionRecord, MeetingRecord, RoomRecord, Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    command: Callable[[argparse.Namespace, Config], int] = args.command
    try:
        config = _config(args)
        return command(args, config)
    except TownhallError as exc:
        return _fail(str(exc))
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="townhall", description="Self-hosted video meetings.")
    parser.add_argument("--config", type=Path, metavar="PATH", help="TOML configuration file")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where data is kept")
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="HTTP port")
    serve.add_argument("--no-captions", action="store_true",
                       help="do not start the captions worker (run it elsewhere, or not at all)")
    serve.set_defaults(command=_serve)

    room = commands.add_parser("room", help="create, list and delete rooms")
    room_commands = room.add_subparsers(metavar="ACTION", required=True)
    create = room_commands.add_parser("create", help="create a room; prints its id and name")
    create.add_argument("name")
    create.add_argument("--captions", action="store_true",
                        help="caption the room's speech (hosts can switch it in the meeting)")
    create.set_defaults(command=_room_create)
    listing = room_commands.add_parser("list", help="list rooms")
    listing.set_defaults(command=_room_list)
    remove = room_commands.add_parser(
        "delete", help="delete a room with its meetings, attendance and chat"
    )
    remove.add_argument("room", metavar="NAME_OR_ID")
    remove.set_defaults(command=_room_delete)

    invite = commands.add_parser("invite", help="print an invite link to a room")
    invite.add_argument("room", metavar="ROOM", help="room name or id")
    invite.add_argument("--role", required=True, help="|".join(MEETING_ROLES))
    invite.add_argument("--ttl", type=int, metavar="SECONDS", help="how long the link is valid")
    invite.set_defaults(command=_invite)

    admin = commands.add_parser("admin-link", help="print a link to the room administration")
    admin.add_argument("--ttl", type=int, metavar="SECONDS", help="how long the link is valid")
    admin.set_defaults(command=_admin_link)

    worker = commands.add_parser(
        "captions-token", help="print a token for a captions worker (townhall captions --token)"
    )
    worker.add_argument("--ttl", type=int, metavar="SECONDS", help="how long the token is valid")
    worker.set_defaults(command=_captions_token)

    text = commands.add_parser("transcript", help="print a meeting's transcript")
    text.add_argument("meeting", metavar="MEETING", help="meeting id")
    text.add_argument("--format", choices=FORMATS, default="vtt", help="vtt (default) or json")
    text.add_argument("--language", metavar="CODE",
                      help="WebVTT in this language where captions were translated to it")
    text.add_argument("--output", type=Path, metavar="FILE", help="write here, not to stdout")
    text.set_defaults(command=_transcript)

    captions = commands.add_parser(
        "captions", help="run the captions worker: caption every room with captions on")
    captions.add_argument("--server", required=True, metavar="URL",
                          help="the townhall server's address, e.g. http://127.0.0.1:8080")
    captions.add_argument("--token", metavar="TOKEN",
                          default=os.environ.get("TOWNHALL_CAPTIONS_TOKEN", ""),
                          help="worker token (default: $TOWNHALL_CAPTIONS_TOKEN)")
    captions.add_argument("--asr-model", metavar="PATH|NAME",
                          help="Whisper model directory or name (default: the asr_model "
                               "setting, base)")
    captions.add_argument("--translation-models", type=Path, metavar="DIR",
                          help="directory of CTranslate2 translation models (default: the "
                               "translation_models setting)")
    captions.add_argument("--threads", type=int, default=0, metavar="N",
                          help="recognition threads (default: 0, the library's choice)")
    captions.add_argument("--speech-languages", metavar="CODES",
                          help="the languages spoken, e.g. en,ru,uk "
                               "(default: the speech_languages setting, else any)")
    captions.set_defaults(command=_captions)
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = Config.load(args.config)
    if args.data_dir is not None:
        config = config.replace(data_dir=args.data_dir)
    return config


def _fail(message: str) -> int:
    print(f"townhall: {message}", file=sys.stderr)
    return EXIT_ERROR


# -- commands ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace, config: Config) -> int:
    if args.host is not None:
        config = config.replace(http_host=args.host)
    if args.port is not None:
        config = config.replace(http_port=args.port)
    if args.no_captions:
        config = config.replace(captions_worker=False)
    secret = secret_for(config)
    if not config.secret_key:
        config = config.replace(secret_key=secret.decode("utf-8"))
    # Imported here so that the other commands never load the server and its media stack.
    serve: Callable[[Config], None] = importlib.import_module("townhall.server.app").serve
    serve(config)
    return EXIT_OK


def _captions(args: argparse.Namespace, config: Config) -> int:
    if args.threads < 0:
        raise BadRequest(f"--threads must not be negative, not {args.threads}")
    # Imported here so that the other commands never load the recognition stack.
    worker = importlib.import_module("townhall.captions.worker")
    models = args.translation_models or config.translation_models
    languages = args.speech_languages or config.speech_languages
    spoken = worker.parse_languages(languages) if languages else None
    worker.run(args.server, args.token, args.asr_model or config.asr_model,
               Path(models) if models else None, args.threads, config.log_level, spoken)
    return EXIT_OK


def _room_create(args: argparse.Namespace, config: Config) -> int:
    async def create(store: Store) -> RoomRecord:
        room = await store.create_room(args.name)
        return await store.set_captions(room.id, True) if args.captions else room

    room = _with_store(config, create)
    print(_room_line(room))
    return EXIT_OK


def _room_list(args: argparse.Namespace, config: Config) -> int:
    for room in _with_store(config, lambda store: store.list_rooms()):
        print(_room_line(room))
    return EXIT_OK


def _room_delete(args: argparse.Namespace, config: Config) -> int:
    async def delete(store: Store) -> RoomRecord:
        room = await store.find_room(args.room)
        await store.delete_room(room.id)
        return room

    room = _with_store(config, delete)
    print(f"deleted {_room_line(room)}")
    return EXIT_OK


def _invite(args: argparse.Namespace, config: Config) -> int:
    if args.role not in MEETING_ROLES:
        raise BadRequest(f"unknown role: {args.role!r} (choose from {', '.join(MEETING_ROLES)})")
    ttl = _ttl(args, config)
    room = _with_store(config, lambda store: store.find_room(args.room))
    token = sign(secret_for(config), room.id, args.role, ttl, time.time())
    print(f"{config.base_url}/r/{room.id}?t={token}")
    return EXIT_OK


def _admin_link(args: argparse.Namespace, config: Config) -> int:
    token = sign(secret_for(config), ANY_ROOM, "admin", _ttl(args, config), time.time())
    print(f"{config.base_url}/?admin={token}")
    return EXIT_OK


def _captions_token(args: argparse.Namespace, config: Config) -> int:
    print(sign(secret_for(config), ANY_ROOM, "caption", _ttl(args, config), time.time()))
    return EXIT_OK


def _transcript(args: argparse.Namespace, config: Config) -> int:
    if args.language is not None and not is_language(args.language):
        raise BadRequest(f"--language must be an ISO 639-1 code, not {args.language!r}")

    async def load(store: Store) -> tuple[MeetingRecord, list[CaptionRecord]]:
        return await store.get_meeting(args.meeting), await store.captions(args.meeting)

    meeting, captions = _with_store(config, load)
    text = write(args.format, meeting, captions, args.language)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return EXIT_OK


# -- helpers -----------------------------------------------------------------------------


def _ttl(args: argparse.Namespace, config: Config) -> int:
    ttl: int = config.invite_ttl if args.ttl is None else args.ttl
    if ttl <= 0:
        raise BadRequest(f"--ttl must be a positive number of seconds, not {ttl}")
    return ttl


def _with_store(config: Config, fn: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
    store = Store.open(config.database)
    try:
        return asyncio.run(fn(store))
    finally:
        store.close()


def _room_line(room: RoomRecord) -> str:
    flags = [flag for flag, on in (("locked", room.locked), ("captions", room.captions)) if on]
    return "\t".join([room.id, room.name, *flags])
