"""The `seriesflow` command: one entry point, a subcommand per role.

    seriesflow run         store + receiver + embedded PostgreSQL, the local all-in-one
    seriesflow store       the store service alone (container entrypoint)
    seriesflow receiver    the receiver alone (container entrypoint)
    seriesflow receiver dead-letters [--replay] [UPDATE_ID...]
    seriesflow migrate     schema to head
    seriesflow send PATH…  C-STORE files to a receiver
    seriesflow echo        C-ECHO a receiver
    seriesflow watch [--after CURSOR] [--kind KIND] [--exec CMD]
                           the store's series events as JSON lines (WatchSeries)
    seriesflow preview SERIES_UID -o FILE | --study STUDY_UID -o FILE
                           a series' preview PNG, or a study's contact sheet

Every setting is an environment variable SERIESFLOW_NAME and a flag --name; the flag wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from seriesflow import __version__, logs, settings
from seriesflow.cli.preview import add_preview_arguments
from seriesflow.cli.scu import SenderConfig, add_send_arguments
from seriesflow.cli.watch import WatchConfig, add_watch_arguments

if TYPE_CHECKING:
    from seriesflow.receiver.config import ReceiverConfig
    from seriesflow.store.config import StoreConfig


def _config_classes() -> tuple[type[StoreConfig], type[ReceiverConfig]]:
    # Imported here so `seriesflow send --help` does not pay for grpc and psycopg.
    from seriesflow.receiver.config import ReceiverConfig
    from seriesflow.store.config import StoreConfig

    return StoreConfig, ReceiverConfig


def build_parser() -> argparse.ArgumentParser:
    store_cls, receiver_cls = _config_classes()
    parser = argparse.ArgumentParser(
        prog="seriesflow",
        description="DICOM ingestion: C-STORE in, an exact catalog in PostgreSQL out.",
        epilog="Every flag --name can also be given as the environment variable SERIESFLOW_NAME.",
    )
    parser.add_argument("--version", action="version", version=f"seriesflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="store, receiver and (unless a database URL is set) embedded PostgreSQL"
    )
    settings.add_flags(run, store_cls)
    shared = frozenset(f.name for f in dataclasses.fields(store_cls))
    settings.add_flags(run, receiver_cls, skip=shared)

    store = commands.add_parser("store", help="the store service (gRPC, PostgreSQL)")
    settings.add_flags(store, store_cls)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    settings.add_flags(migrate, store_cls)

    receiver = commands.add_parser("receiver", help="the receiver service (DICOM Storage SCP)")
    settings.add_flags(receiver, receiver_cls)
    receiver_commands = receiver.add_subparsers(dest="receiver_command", metavar="SUBCOMMAND")
    dead = receiver_commands.add_parser(
        "dead-letters", help="list updates the store rejected, or replay them"
    )
    dead.add_argument("--replay", action="store_true", help="send them to the store again")
    dead.add_argument("update_ids", nargs="*", metavar="UPDATE_ID", help="only these updates")
    settings.add_flags(dead, receiver_cls)

    send = commands.add_parser("send", help="C-STORE every DICOM file under the paths")
    add_send_arguments(send)

    echo = commands.add_parser("echo", help="C-ECHO a receiver")
    settings.add_flags(echo, SenderConfig)

    watch = commands.add_parser(
        "watch",
        help="print the store's series events as JSON lines; run a command per completed series",
        description="Print the store's series events (WatchSeries) as JSON lines, in cursor"
        " order; resume with --after the last cursor printed.",
        epilog="Exit status: 0 after SIGTERM, 130 after SIGINT, 1 when --exec CMD failed,"
        " 2 when the store refused the watch (bad or pruned cursor, credentials).",
    )
    add_watch_arguments(watch)

    preview = commands.add_parser(
        "preview",
        help="write a series' preview PNG, or a study's contact sheet, from the store",
        epilog="Exit status: 0 written, 1 nothing to write (unknown, no preview yet, failed),"
        " 2 the store refused or is unreachable.",
    )
    add_preview_arguments(preview)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Every process of ours forks only to exec (pg_ctl, the children of `seriesflow run`).
    # gRPC's fork handlers exist for fork-without-exec and have crashed such children
    # (SIGSEGV before exec) while gRPC threads were busy. gRPC reads this when it is first
    # imported, which the subcommands do only after this line.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except settings.ConfigError as exc:
        print(f"seriesflow {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    store_cls, receiver_cls = _config_classes()
    if args.command == "watch":
        from seriesflow.cli import watch

        watch_config = settings.load(WatchConfig, args=args)
        logs.configure("WARNING")
        return watch.watch(watch_config, watch.options_from_args(args))
    if args.command == "preview":
        from seriesflow.cli import preview

        logs.configure("WARNING")
        return preview.main(settings.load(WatchConfig, args=args), args)
    if args.command in ("send", "echo"):
        from seriesflow.cli import scu

        sender = settings.load(SenderConfig, args=args)
        logs.configure("WARNING")
        return scu.send(sender, args.paths) if args.command == "send" else scu.echo(sender)
    if args.command == "run":
        from seriesflow.cli import run

        store_config = settings.load(store_cls, args=args)
        receiver_config = settings.load(receiver_cls, args=args)
        logs.configure(store_config.log_level)
        return run.main(store_config, receiver_config, run.flag_environment(args))
    if args.command in ("store", "migrate"):
        store_config = settings.load(store_cls, args=args)
        logs.configure(store_config.log_level)
        from seriesflow import migrations

        if args.command == "migrate":
            from seriesflow.cli import migrate

            return migrate.main(store_config)
        from seriesflow.store import server

        return server.main(store_config, migrations.head_revisions())
    receiver_config = settings.load(receiver_cls, args=args)
    logs.configure(receiver_config.log_level)
    if args.receiver_command == "dead-letters":
        from seriesflow.receiver import dead_letters

        return dead_letters.main(receiver_config, args.replay, args.update_ids)
    from seriesflow.receiver import app

    return app.main(receiver_config)
