"""``posttrain annotate ...``: serve the app, manage accounts and assignments, report, export.

    posttrain annotate create-admin  --db votes.db [--name admin] [--token-days N]
    posttrain annotate add-annotator --db votes.db [--token-days N] alice bob
    posttrain annotate reset-token   --db votes.db [--token-days N] alice
    posttrain annotate deactivate    --db votes.db alice
    posttrain annotate load          --db votes.db --tasks samples.jsonl
    posttrain annotate assign        --db votes.db [--overlap 2] [--annotators alice,bob]
    posttrain annotate serve         --db votes.db --tasks samples.jsonl --port 8000
    posttrain annotate stats         --db votes.db
    posttrain annotate export        --db votes.db --output prefs.jsonl [--mode all|majority]

``--db`` takes a SQLAlchemy URL (``sqlite:///votes.db``, ``postgresql+psycopg://user@host/db``)
or a plain file path (SQLite). Bad input prints one line ``error: ...`` on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from posttrain.annotate import auth, service
from posttrain.annotate.db import ROLE_ADMIN, ROLE_ANNOTATOR, make_engine, session
from posttrain.annotate.export import MODES, preference_records, write_jsonl
from posttrain.annotate.tasks import TaskFileError, read_tasks


class UsageError(Exception):
    """Printed as ``error: MESSAGE``; exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, like every other posttrain error
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="posttrain annotate", description="Collect human preferences in a web app."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", required=True, help="SQLAlchemy URL or SQLite file path")
        return p

    p = command("serve", "Run the web app (loads --tasks first if given).")
    p.add_argument("--tasks", help="tasks JSONL: prompt + completions (2..26), optional id, gold")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback)")
    p.add_argument("--guidelines", help="Markdown file shown to annotators (default: built in)")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (HTTPS)")
    p.add_argument(
        "--session-hours",
        type=float,
        default=auth.SESSION_HOURS,
        help=f"a browser login lasts this long (default {auth.SESSION_HOURS:g})",
    )

    p = command("load", "Load a tasks file into the database.")
    p.add_argument("--tasks", required=True)

    p = command("create-admin", "Create an admin account and print its login token.")
    p.add_argument("--name", default="admin")
    p.add_argument(
        "--token-days",
        type=float,
        help="the token stops working after this many days (default never)",
    )

    p = command("add-annotator", "Create annotator accounts; prints 'NAME TOKEN' per line.")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--token-days",
        type=float,
        help="the token stops working after this many days (default never)",
    )

    p = command(
        "reset-token", "Give an account a new login token (the old one and its sessions stop)."
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--token-days",
        type=float,
        help="the token stops working after this many days (default never)",
    )

    p = command("deactivate", "Lock an account out: its token and open sessions stop working.")
    p.add_argument("name", metavar="NAME")

    p = command("assign", "Assign tasks: gold items to everyone, others to --overlap annotators.")
    p.add_argument("--annotators", help="comma-separated names (default: all annotators)")
    p.add_argument("--overlap", type=int, default=1, help="annotators per non-gold task")
    p.add_argument("--seed", type=int, default=0, help="seed of queue and response shuffles")

    p = command("stats", "Print progress, gold agreement and inter-annotator agreement as JSON.")

    p = command("export", "Write preference JSONL (prompt, chosen, rejected) for rm / dpo.")
    p.add_argument("--output", required=True)
    p.add_argument("--mode", choices=MODES, default="all")
    p.add_argument("--include-gold", action="store_true", help="also export gold items")
    p.add_argument(
        "--min-gold-agreement",
        type=float,
        help="drop annotators whose agreement with gold is below this (e.g. 0.75)",
    )
    return parser


def _load(engine, path: str) -> tuple[int, int]:
    specs = read_tasks(path)
    with session(engine) as db:
        added, present = service.load_tasks(db, specs)
        db.commit()
    return added, present


def _run(args) -> int:
    if args.command == "export" and args.min_gold_agreement is not None:
        if not 0.0 <= args.min_gold_agreement <= 1.0:
            raise UsageError("--min-gold-agreement must be between 0 and 1")
    if getattr(args, "token_days", None) is not None and not 0 < args.token_days <= 36500:
        raise UsageError(f"--token-days must be from 0 (exclusive) to 36500, got {args.token_days}")
    if args.command == "serve":
        if not 0 < args.session_hours <= 24 * 366:
            raise UsageError("--session-hours must be from 0 (exclusive) to 8784")
        if args.guidelines and not Path(args.guidelines).is_file():
            raise UsageError(f"{args.guidelines}: no such file")
        if args.tasks:
            read_tasks(args.tasks)  # fail on a bad file before touching the database
    elif args.command == "load":
        read_tasks(args.tasks)
    try:
        engine = make_engine(args.db)
        engine.connect().close()
    except Exception as exc:  # a bad URL, a missing driver, an unreachable server
        raise UsageError(f"cannot open database {args.db}: {str(exc).splitlines()[0]}") from None

    if args.command == "load":
        added, present = _load(engine, args.tasks)
        print(f"loaded {added} new tasks ({present} already present) from {args.tasks}")
    elif args.command == "create-admin":
        with session(engine) as db:
            token = auth.create_account(db, args.name, ROLE_ADMIN, token_days=args.token_days)
            db.commit()
        print(f"{args.name} {token}")
    elif args.command == "add-annotator":
        with session(engine) as db:
            tokens = [
                (name, auth.create_account(db, name, ROLE_ANNOTATOR, token_days=args.token_days))
                for name in args.names
            ]
            db.commit()
        for name, token in tokens:
            print(f"{name} {token}")
    elif args.command == "reset-token":
        with session(engine) as db:
            token = auth.reset_token(db, args.name, token_days=args.token_days)
            db.commit()
        print(f"{args.name} {token}")
    elif args.command == "deactivate":
        with session(engine) as db:
            auth.deactivate(db, args.name)
            db.commit()
        print(f"deactivated {args.name}: its token and open sessions no longer work")
    elif args.command == "assign":
        names = [n.strip() for n in args.annotators.split(",")] if args.annotators else None
        with session(engine) as db:
            before = service.assignment_counts(db)
            count = service.assign(db, names, overlap=args.overlap, seed=args.seed)
            after = service.assignment_counts(db)
            db.commit()
        gold, regular = (after[k] - before[k] for k in ("gold", "regular"))
        print(f"made {count} new assignments ({gold} gold, {regular} regular)")
        if count and not regular:
            print("note: only gold tasks were added: every other task already has its annotators")
    elif args.command == "stats":
        with session(engine) as db:
            print(json.dumps(service.dashboard(db), indent=2))
    elif args.command == "export":
        with session(engine) as db:
            records = preference_records(
                db,
                args.mode,
                include_gold=args.include_gold,
                min_gold_agreement=args.min_gold_agreement,
            )
        write_jsonl(records, args.output)
        print(f"wrote {len(records)} preference pairs to {args.output}")
    elif args.command == "serve":
        return _serve(engine, args)
    return 0


def _serve(engine, args) -> int:
    import uvicorn

    from posttrain.annotate.server import create_app

    try:  # a taken port is a clear one-line error, not a uvicorn log line
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    if args.tasks:
        added, present = _load(engine, args.tasks)
        print(f"loaded {added} new tasks ({present} already present) from {args.tasks}", flush=True)
    guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else None
    app = create_app(
        engine,
        guidelines=guidelines,
        secure_cookies=args.secure_cookies,
        session_hours=args.session_hours,
    )
    print(f"posttrain annotate: serving on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` excludes ``annotate``. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except (UsageError, TaskFileError, auth.AccountError, service.NotFound, service.Invalid) as exc:
        message = str(exc.args[0] if exc.args else exc)
        print(
            f"error: {message.splitlines()[0] if message else type(exc).__name__}", file=sys.stderr
        )
        return 2
    except SystemExit as exc:  # --help, or uvicorn giving up (e.g. the port is taken)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
