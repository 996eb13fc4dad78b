"""The auditor's commands: verify the log, list and prove checkpoints, export a bundle.

They read the log straight from PostgreSQL (CERTPLANE_DATABASE_URL; a read-only role is
enough), or an exported bundle with no database at all. Exit codes: 0 the log is what was
signed, 1 it is not (or cannot be proved), 2 usage, 3 the database cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import NoReturn

import asyncpg
import msgspec

from events.audit import TreeHead
from events.union import tag_of
from services.audit.export import export
from services.audit.keys import trusted_public_key
from services.audit.proofs import ProofFailed, consistency_proof, inclusion_proof
from services.audit.replay import (
    FirstDraws,
    Moment,
    Replay,
    app_summary,
    apps_at,
    diff,
    history_of,
    served_at,
    snapshot,
)
from services.audit.verify import (
    HEAD_DECODER,
    KEY_FILE,
    Outcome,
    bundle_heads,
    bundle_rows,
    db_heads,
    verify_database,
    verify_rows,
)
from services.cli import output
from services.config import Settings, redact
from services.domain.app import AppState
from services.domain.dns_target import render
from services.domain.domain_name import normalize_hostname
from services.domain.errors import Rejected as RejectedError
from services.domain.tree_head import key_id, signature_problem

EXIT_BAD, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def fail(code: int, message: str) -> NoReturn:
    output.warn(message)
    raise SystemExit(code)


def parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(EXIT_USAGE, f"{text!r} is not a time: use ISO 8601, e.g. 2026-11-26T21:30:00Z")
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def connect(settings: Settings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(settings.database_url, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        fail(EXIT_UNREACHABLE, f"cannot reach the log at {redact(settings.database_url)} ({e})")


def read_head(path: str, trusted: bytes | None) -> TreeHead:
    try:
        head = HEAD_DECODER.decode(Path(path).read_bytes())
    except OSError as e:
        fail(EXIT_USAGE, f"cannot read {path}: {e.strerror}")
    except msgspec.DecodeError as e:
        fail(EXIT_BAD, f"{path} is not a checkpoint (a TreeHead JSON document): {e}")
    problem = signature_problem(head, trusted)
    if problem:
        fail(EXIT_BAD, f"the checkpoint in {path} cannot be trusted: {problem}")
    return head


def _trusted(settings: Settings, args: argparse.Namespace) -> bytes | None:
    try:
        return trusted_public_key(settings, getattr(args, "public_key", None))
    except ValueError as e:
        fail(EXIT_USAGE, str(e))


def _writer_key(settings: Settings) -> bytes | None:
    """The operator's extra check, when this machine holds the master key."""
    from services.domain.writer_mac import writer_key
    from services.gateway.key_custody import load_master_key

    try:
        return writer_key(load_master_key(settings).secret)
    except (FileNotFoundError, ValueError):
        return None


def _progress(position: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  verified {position:,} events...")
        sys.stderr.flush()


def _report(outcome: Outcome, trusted: bytes | None, args: argparse.Namespace) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 40 + "\r")
    if args.json:
        output.print_json(
            {
                "ok": outcome.ok,
                "events": outcome.events,
                "checkpoints": len(outcome.heads),
                "first_bad_position": outcome.problem.position if outcome.problem else None,
                "problem": outcome.problem.reason if outcome.problem else None,
                "unsealed": outcome.unsealed,
            }
        )
    if outcome.problem is not None:
        fail(EXIT_BAD, f"TAMPERED: position {outcome.problem.position}: {outcome.problem.reason}")
    keys = sorted({h.key_id for h in outcome.heads})
    if not args.json:
        print(f"Verified {outcome.events:,} events: the hash chain is intact.")
        if outcome.heads:
            newest = outcome.heads[-1]
            pinned = (
                " (the pinned key)" if trusted else " (not pinned: compare with the published id)"
            )
            print(
                f"The Merkle tree matches {len(outcome.heads)} signed checkpoint(s); the newest "
                f"covers positions 1–{newest.size}, signed {newest.signed_at:%Y-%m-%d %H:%M:%S} "
                f"UTC by key {', '.join(keys)}{pinned}."
            )
    if outcome.unsealed is not None:
        first, last = outcome.unsealed
        if args.allow_unsealed:
            output.warn(f"Positions {first}–{last} are not covered by a signed checkpoint yet.")
            return
        fail(
            EXIT_BAD,
            f"Positions {first}–{last} are not covered by any signed checkpoint, so nothing "
            "proves they were written by the control plane. The sealer signs within seconds: "
            "run this again in a moment (or pass --allow-unsealed); if they stay unsealed, they "
            "were appended behind its back.",
        )


async def audit_verify(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    trusted = _trusted(settings, args)
    extra = [read_head(p, trusted) for p in args.checkpoint or []]
    if args.bundle:
        directory = Path(args.bundle)
        if not (directory / KEY_FILE).exists():
            fail(EXIT_USAGE, f"{directory} is not an audit bundle (no {KEY_FILE})")
        if trusted is None:
            import base64

            trusted = base64.b64decode((directory / KEY_FILE).read_text().strip())
            output.warn(
                f"Trusting the bundle's own public key {key_id(trusted)}: pass --public-key to "
                "pin the one the operator published."
            )
        outcome = verify_rows(
            bundle_rows(directory), [*bundle_heads(directory), *extra], trusted, _progress
        )
        _report(outcome, trusted, args)
        return
    macs = _writer_key(settings)
    conn = await connect(settings)
    try:
        outcome = await verify_database(
            conn, extra, trusted, _progress, macs, url=settings.database_url
        )  # a long log is checked in chunks by a worker process per core
    finally:
        await conn.close()
    _report(outcome, trusted, args)
    if not args.json:
        print(
            "Writer MACs checked: every event was written by a gateway."
            if macs
            else "Writer MACs not checked (no master key here; the signed checkpoints suffice)."
        )


async def audit_checkpoints(args: argparse.Namespace) -> None:
    conn = await connect(Settings.from_env())
    try:
        heads = await db_heads(conn)
    finally:
        await conn.close()
    if args.out:
        if not heads:
            fail(
                EXIT_BAD,
                "No checkpoint has been signed yet: is the sealer (`certplane projector`) running?",
            )
        Path(args.out).write_bytes(msgspec.json.format(msgspec.json.encode(heads[-1])))
        print(f"Wrote the checkpoint of size {heads[-1].size} to {args.out}")
        return
    if args.json:
        output.print_json(heads)
        return
    rows = [
        [str(h.size), h.root_hash[:16] + "…", output.when(h.signed_at), h.key_id] for h in heads
    ]
    print(output.table(["Size", "Root", "Signed", "Key"], rows))


async def audit_prove(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    head = read_head(args.checkpoint, _trusted(settings, args))
    conn = await connect(settings)
    try:
        proof = await inclusion_proof(conn, args.position, head)
    except ProofFailed as e:
        fail(EXIT_BAD, str(e))
    finally:
        await conn.close()
    output.print_json(proof)


async def audit_consistency(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    trusted = _trusted(settings, args)
    old, new = read_head(args.old, trusted), read_head(args.new, trusted)
    conn = await connect(settings)
    try:
        proof = await consistency_proof(conn, old, new)
    except ProofFailed as e:
        fail(EXIT_BAD, f"INCONSISTENT: {e}")
    finally:
        await conn.close()
    small, large = sorted((old, new), key=lambda h: h.size)
    if args.json:
        output.print_json({"consistent": True, "old": small, "new": large,
                           "proof": [p.hex() for p in proof]})  # fmt: skip
        return
    print(f"Consistent: the checkpoint of size {large.size} extends the one of size {small.size} "
          f"(a {len(proof)}-hash RFC 9162 proof checks against both signed roots).")  # fmt: skip


async def audit_export(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    until = parse_time(args.until) if args.until else None
    conn = await connect(settings)
    try:
        result = await export(conn, Path(args.out), until)
    except ValueError as e:
        fail(EXIT_BAD, str(e))
    finally:
        await conn.close()
    print(f"Exported positions 1–{result.size} and {result.heads} checkpoint(s) to {args.out}.")
    if result.left_out:
        output.warn(
            f"{result.left_out} later event(s) up to then are not covered by a checkpoint yet "
            "and were left out."
        )
    print(f"Check it anywhere with: certplane audit:verify --bundle {args.out}")


def _moment(args: argparse.Namespace) -> Moment:
    if getattr(args, "at", None) and getattr(args, "position", None) is not None:
        fail(EXIT_USAGE, "Give --at TIME or --position N, not both.")
    return Moment(
        position=getattr(args, "position", None),
        at=parse_time(args.at) if getattr(args, "at", None) else None,
    )


def _replay_progress(position: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  replayed {position:,} events...")
        sys.stderr.flush()


def _clear_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 40 + "\r")


async def audit_replay(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    moment = _moment(args)
    conn, spare = await connect(settings), await connect(settings)
    summaries: list[dict[str, object]] = []
    zone = settings.dns_zone
    try:
        async with conn.transaction(readonly=True), spare.transaction(readonly=True):
            snap = await snapshot(conn, moment, zone, dns=False)
            upto = Moment(position=snap.position)  # both connections see exactly these events
            if not args.json:
                when = f" ({snap.recorded_at:%Y-%m-%d %H:%M:%S} UTC)" if snap.recorded_at else ""
                print(f"=== State after position {snap.position}{when}")
            draws = FirstDraws()
            # text streams (one app in memory at a time); JSON is one document, printed at the end
            async for app, keys in apps_at(conn, upto, app=args.app, draws=draws, spare=spare,
                                           progress=_replay_progress):  # fmt: skip
                summary = app_summary(app, lambda h, k=keys: render(k[h], zone) if h in k else None)  # type: ignore[misc]
                if args.json:
                    summaries.append(summary)
                else:
                    _clear_progress()
                    _print_app(summary)
            if not draws.exact:  # a DNS target was re-drawn somewhere: allocate in log order
                if not args.json:
                    output.warn("A DNS target was re-drawn in this log (two draws coincided): "
                                "the exact listing follows.")  # fmt: skip
                exact = await snapshot(conn, upto, zone)
                summaries = [
                    app_summary(app, exact.targets)
                    async for app, _ in apps_at(conn, upto, app=args.app)
                ]
                if not args.json:
                    for summary in summaries:
                        _print_app(summary)
    finally:
        await conn.close()
        await spare.close()
    _clear_progress()
    if args.json:
        output.print_json({"position": snap.position, "recorded_at": snap.recorded_at,
                           "apps": summaries})  # fmt: skip
        return
    if not _printed["any"]:
        print(f"No app {args.app} then." if args.app else "No apps then.")


_printed = {"any": False}


def _print_app(summary: dict[str, object]) -> None:
    _printed["any"] = True
    print(f"\n=== {summary['app']}")
    domains: dict[str, dict[str, object]] = summary["domains"]  # type: ignore[assignment]
    endpoints: dict[str, dict[str, object]] = summary["endpoints"]  # type: ignore[assignment]
    if domains:
        rows = [
            [h, str(d["dns_target"] or ""), str(d["endpoint"] or "")] for h, d in domains.items()
        ]
        print(output.table(["Domain", "DNS Target", "Endpoint"], rows))
    for name, e in endpoints.items():
        print(f"Endpoint {name} ({_kind(e['type'])}): {e['subject']}, issued by "
              f"{e['issuer']}, valid {e['not_before']:%Y-%m-%d} to {e['not_after']:%Y-%m-%d}, "
              f"SHA256 {e['fingerprint_sha256']}")  # fmt: skip


async def audit_served(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    moment = _moment(args)
    try:
        host = normalize_hostname(args.hostname)
    except RejectedError as e:
        fail(EXIT_USAGE, e.message)
    conn = await connect(settings)
    try:
        served, state = await served_at(conn, host, moment, settings.dns_zone)
    finally:
        await conn.close()
    if args.json:
        output.print_json({"hostname": host, "position": state.position, "served": served})
        return
    when = args.at or f"position {state.position}"
    if served is None:
        print(f"Nothing was configured to be served for {host} at {when}: a TLS handshake for it "
              "got an unrecognized_name alert.")  # fmt: skip
        return
    cert = served.endpoint
    via = f" (through {served.entry})" if served.entry != host else ""
    print(f"At {when}, routers were configured to serve {host}{via} with:")
    print(f"  app             {served.app}")
    print(f"  endpoint        {cert['name']} ({_kind(cert['type'])})")
    print(f"  fingerprint     SHA256 {cert['fingerprint_sha256']}")
    print(f"  subject         {cert['subject']}")
    print(f"  issuer          {cert['issuer']}")
    print(
        f"  valid           {cert['not_before']:%Y-%m-%d %H:%M} to "
        f"{cert['not_after']:%Y-%m-%d %H:%M} UTC"
    )
    print(f"  since           position {served.since_position} ({served.since_event}, "
          f"{served.since_at:%Y-%m-%d %H:%M:%S} UTC)")  # fmt: skip


async def audit_history(args: argparse.Namespace) -> None:
    from services.storage.event_log import StoredEvent

    settings = Settings.from_env()
    app = args.app
    if not app:
        fail(EXIT_USAGE, "Which app? Pass -a APP.")
    conn = await connect(settings)
    entries: list[dict[str, object]] = []
    previous: dict[str, object] = {"domains": {}, "endpoints": {}}

    def on_change(
        state: Replay, stored: StoredEvent, name: str, before: AppState, after: AppState
    ) -> None:
        nonlocal previous
        if name != app:
            return
        now = (
            app_summary(after, state.targets) if after.exists else {"domains": {}, "endpoints": {}}
        )
        entries.append({
            "position": stored.position, "recorded_at": stored.recorded_at,
            "event": tag_of(type(stored.event)), "actor": stored.metadata.actor,
            "changes": diff(previous, now),
        })  # fmt: skip
        previous = now

    try:
        await history_of(conn, app, _moment(args), settings.dns_zone, on_change)
    finally:
        await conn.close()
    _clear_progress()
    if args.json:
        output.print_json(entries)
        return
    if not entries:
        print(f"No history for {app}.")
    for entry in entries:
        print(f"{entry['recorded_at']:%Y-%m-%d %H:%M:%S} UTC  #{entry['position']}  "
              f"{entry['event']}  by {entry['actor']}")  # fmt: skip
        for line in entry["changes"]:  # type: ignore[attr-defined]
            print(f"    {line}")


def add_commands(sub: argparse._SubParsersAction, add: object) -> None:  # type: ignore[type-arg]
    """Register the audit commands with the CLI's `_add` helper."""
    p = add(
        sub,
        "audit:verify",
        audit_verify,
        "check the log against its hash chain and signed checkpoints",
        app=False,
    )  # type: ignore[operator]
    p.add_argument("--bundle", metavar="DIR", help="check an exported bundle (no database)")
    p.add_argument("--public-key", help="the trusted signing key (base64 or a file)")
    p.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="also check a checkpoint kept outside (from <prefix>.audit.checkpoints)")  # fmt: skip
    p.add_argument("--allow-unsealed", action="store_true",
                   help="accept events not yet covered by a checkpoint (with a warning)")  # fmt: skip
    p = add(sub, "audit:checkpoints", audit_checkpoints, "list signed tree heads", app=False)  # type: ignore[operator]
    p.add_argument("--out", metavar="FILE", help="write the newest one to FILE (for audit:prove)")
    p = add(
        sub,
        "audit:prove",
        audit_prove,
        "an inclusion proof of an event in a checkpoint (JSON, with or without --json)",
        app=False,
    )  # type: ignore[operator]
    p.add_argument("position", type=int, metavar="POSITION")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--public-key", help="the trusted signing key (base64 or a file)")
    p = add(
        sub,
        "audit:consistency",
        audit_consistency,
        "check that a newer checkpoint extends an older one",
        app=False,
    )  # type: ignore[operator]
    p.add_argument("old", metavar="OLD.json")
    p.add_argument("new", metavar="NEW.json")
    p.add_argument("--public-key", help="the trusted signing key (base64 or a file)")
    p = add(
        sub,
        "audit:export",
        audit_export,
        "write a self-contained, verifiable bundle",
        app=False,
        json=False,
    )  # type: ignore[operator]
    p.add_argument("--until", metavar="TIME", help="ISO 8601 (default: now)")
    p.add_argument("--out", required=True, metavar="DIR")
    p = add(sub, "audit:replay", audit_replay, "the state of apps at a past moment, from the log")  # type: ignore[operator]
    p.add_argument("--at", metavar="TIME", help="ISO 8601")
    p.add_argument("--position", type=int, metavar="N")
    p = add(sub, "audit:served", audit_served,
            "which certificate routers served for a hostname at a moment", app=False)  # type: ignore[operator]  # fmt: skip
    p.add_argument("hostname", metavar="HOST")
    p.add_argument("--at", metavar="TIME", help="ISO 8601 (default: now)")
    p.add_argument("--position", type=int, metavar="N")
    p = add(sub, "audit:history", audit_history,
            "an app's history from the log, with what each event changed")  # type: ignore[operator]  # fmt: skip
    p.add_argument("--at", metavar="TIME", help="until then (ISO 8601)")


def _kind(endpoint_type: object) -> str:
    """As `certs` shows the type: SNI, or the legacy SSL Endpoint."""
    return "SNI" if endpoint_type == "sni" else "SSL Endpoint"
