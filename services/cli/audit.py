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
from services.audit.export import export
from services.audit.keys import trusted_public_key
from services.audit.proofs import ProofFailed, consistency_proof, inclusion_proof
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
from services.config import Settings
from services.domain.tree_head import key_id, signature_problem
from services.storage.database import redact

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
        outcome = await verify_database(conn, extra, trusted, _progress, macs)
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
        "an inclusion proof of an event in a checkpoint",
        app=False,
        json=False,
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
