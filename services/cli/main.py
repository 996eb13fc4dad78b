"""`certplane`: manage apps, domains and certificates the way `heroku certs:*` does.

Exit codes: 0 success, 1 the control plane refused (the message says why and how to fix
it), 2 a usage error, 3 the control plane cannot be reached (the message names the URL).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from events.app import CreateApp, DestroyApp
from events.base import Command
from events.codec import QUERY_REPLY_DECODER
from events.domain import AddDomain, RemoveDomain, UpdateDomain
from events.endpoint import AddCert, EndpointType, RemoveCert, UpdateCert
from events.projection import SkipProjection
from events.replies import (
    Accepted,
    AppsView,
    AppView,
    AuditView,
    Checkpoints,
    ProjectionsView,
    QueryParams,
    Rejected,
)
from services.cli import audit as audit_commands
from services.cli import output
from services.cli.client import ControlPlane
from services.cli.routers import (
    last_reports,
    live,
    print_wait_result,
    routers_table,
    wait_for_routers,
)
from services.config import ConfigError, Settings
from services.domain.domain_name import normalize_hostname
from services.domain.errors import Rejected as RejectedError
from services.domain.errors import Unavailable
from services.domain.key_envelope import seal_for_gateway
from services.domain.naming import generated_app_name, validate_app_name
from services.domain.x509_bundle import (
    MAX_BUNDLE_BYTES,
    matching_key,
    one_line_name,
    order_chain,
    split_material,
    unusable_keys,
)
from services.projectors.names import NAMES
from services.subjects import router_id_token

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
T = TypeVar("T")


class UsageError(Exception):
    pass


def _position(text: str) -> int:
    """A log position (argparse type): positions start at 1, 0 is the empty log."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log position (0 or more)")
    return value


def _fail(code: int, message: str) -> NoReturn:
    if _line.open:  # "Adding SSL to shop... !" first, as Heroku ends a failed step
        sys.stdout.flush()
        print(" !", file=sys.stderr)
        _line.open = False
    output.warn(message)
    raise SystemExit(code)


@dataclasses.dataclass
class _Line:
    """The progress line a change prints ("Adding SSL to shop... done"): open until it ends,
    with the command's warnings held until then so that they do not land inside it."""

    open: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)


_line = _Line()


def _app(args: argparse.Namespace, name: str | None = None) -> str:
    """The app a command is about: `name` (apps:create NAME), -a/--app or CERTPLANE_APP.

    Checked here, as the gateway would refuse it, because the name becomes a token of the
    NATS subject, and a space or a wildcard in it is not a subject NATS can carry.
    """
    app = name or getattr(args, "app", None) or os.environ.get("CERTPLANE_APP")
    if not app:
        raise UsageError("No app specified: pass -a APP (or --app APP), or set CERTPLANE_APP.")
    try:
        return validate_app_name(app)
    except RejectedError as e:
        _fail(EXIT_REJECTED, f"{e.message} [{e.code}]")


def _read(path: str) -> bytes:
    """A certificate or key file, read no further than a whole bundle may be: a device,
    a pipe or a disk image passed by mistake is refused, not read into memory."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as e:
        _fail(
            EXIT_REJECTED, f"Cannot read {path}: {e.strerror}. Check the path and its permissions."
        )
    if len(data) > MAX_BUNDLE_BYTES:
        _fail(
            EXIT_REJECTED,
            f"{path} is larger than {MAX_BUNDLE_BYTES // 1024} KiB, the most a whole certificate "
            "bundle may be: pass only the certificate, its intermediates and the key. "
            "[bundle_too_large]",
        )
    return data


def _confirm(args: argparse.Namespace, app: str, what: str) -> None:
    if args.confirm != app:
        hint = f"run it again with --confirm {app}"
        got = f" (--confirm {args.confirm} does not match)" if args.confirm else ""
        _fail(EXIT_REJECTED, f"This {what} {app} and cannot be undone{got}: to proceed, {hint}.")


def _settings() -> Settings:
    return Settings.from_env()


def _control_plane() -> ControlPlane:
    s = _settings()
    return ControlPlane(s.nats_url, s.prefix)


def _check(reply: Accepted | Rejected) -> Accepted:
    if isinstance(reply, Rejected):
        _fail(EXIT_REJECTED, f"{reply.message} [{reply.code}]")
    for warning in reply.warnings:
        _warn(warning)
    return reply


def _warn(message: str) -> None:
    """A warning now, or after the progress line if one is open."""
    if _line.open:
        _line.warnings = [*_line.warnings, message]
    else:
        output.warn(message)


READ_YOUR_WRITES_TIMEOUT = 10.0

# `projections:skip NAME POSITION` is the command's documented form: the reason is asked
# for, not required, and the audit log says when none was given.
NO_REASON = "no reason given (projections:skip without --reason)"


async def _projected(
    cp: ControlPlane, position: int, names: tuple[str, ...] = ("certificates", "dns_targets")
) -> bool:
    """Wait until the projections the CLI reads have applied `position` (read your writes)."""
    deadline = time.monotonic() + READ_YOUR_WRITES_TIMEOUT
    while True:
        reply = await cp.query(None, "checkpoints")
        if isinstance(reply, Checkpoints):
            behind = {
                n: reply.positions.get(n, 0) for n in names if reply.positions.get(n, 0) < position
            }
            if not behind:
                return True
            if time.monotonic() > deadline:
                where = ", ".join(f"{n} at {p}" for n, p in behind.items())
                _warn(
                    f"The change is saved (position {position}), but the read models are behind "
                    f"({where}) after {READ_YOUR_WRITES_TIMEOUT:.0f}s, so what follows may not show "
                    "it yet: check `certplane projections` (is `certplane projector` running?)."
                )
                return False
        await asyncio.sleep(0.02)


def _expect(reply: object, kind: type[T]) -> T:
    """The view a query answered, or exit 1 with the control plane's reason."""
    if isinstance(reply, Rejected):
        _fail(EXIT_REJECTED, f"{reply.message} [{reply.code}]")
    assert isinstance(reply, kind), reply
    return reply


async def _app_view(cp: ControlPlane, app: str) -> AppView:
    return _expect(await cp.query(app, "app"), AppView)


def _progress(text: str, args: argparse.Namespace) -> None:
    if not args.json:
        print(f"{text}... ", end="", flush=True)
        _line.open = True


def _done(args: argparse.Namespace) -> None:
    if not args.json:
        print("done", flush=True)
    _line.open = False
    warnings, _line.warnings = _line.warnings, []
    for warning in warnings:
        output.warn(warning)


class _Taken(Exception):
    """A rejection the caller asked to handle itself (see `_change`'s `quiet_codes`)."""


async def _change(
    args: argparse.Namespace,
    label: str,
    command: Command,
    *,
    quiet_codes: frozenset[str] | set[str] = frozenset(),
) -> Accepted:
    """Send a command, say so as Heroku does, and wait until the read models show it."""
    async with _control_plane() as cp:
        _progress(label, args)
        answer = await cp.command(command)
        if isinstance(answer, Rejected) and answer.code in quiet_codes:
            raise _Taken(answer.code)
        reply = _check(answer)
        await _projected(cp, reply.position)
        _done(args)
    if args.json:
        output.print_json(reply)
    return reply


async def _maybe_wait(cp: ControlPlane, args: argparse.Namespace, position: int) -> None:
    """With --wait: return once every live router serves `position`, or exit 1 saying which
    do not."""
    if not getattr(args, "wait", False):
        return
    routers, behind = await wait_for_routers(cp.nc, _settings(), position, args.wait_timeout)
    if not print_wait_result(position, routers, behind, quiet=args.json):
        raise SystemExit(EXIT_REJECTED)


# -- apps ---------------------------------------------------------------------------------


async def apps_create(args: argparse.Namespace) -> None:
    if args.name or args.app or os.environ.get("CERTPLANE_APP"):
        app = _app(args, args.name)
        await _change(args, f"Creating {app}", CreateApp(app=app))
        return
    # No name: one is made up, as Heroku does; a name someone has taken is drawn again.
    for _ in range(5):
        app = generated_app_name(secrets.token_hex(8))
        try:
            await _change(args, f"Creating {app}", CreateApp(app=app), quiet_codes={"app_exists"})
            return
        except _Taken:
            if not args.json:
                print("taken; ", end="", flush=True)
    _fail(EXIT_REJECTED, "Five generated names were all taken: pass a name, apps:create NAME.")


async def apps_list(args: argparse.Namespace) -> None:
    async with _control_plane() as cp:
        view = _expect(await cp.query(None, "apps"), AppsView)
    if args.json:
        output.print_json(view.apps)
        return
    print("=== Apps")
    for app in sorted(view.apps, key=lambda a: a.name):
        print(app.name)


async def apps_destroy(args: argparse.Namespace) -> None:
    app = _app(args, args.name)
    _confirm(args, app, "command will permanently destroy the app")
    await _change(
        args, f"Destroying {app} (including all domains and certificates)", DestroyApp(app=app)
    )


# -- domains ------------------------------------------------------------------------------


async def domains_add(args: argparse.Namespace) -> None:
    app = _app(args)
    async with _control_plane() as cp:
        _progress(f"Adding {args.hostname} to {app}", args)
        reply = _check(await cp.command(AddDomain(app=app, hostname=args.hostname)))
        _done(args)
        view = await _app_view(cp, app) if await _projected(cp, reply.position) else None
    hostname = reply.events[0].hostname  # type: ignore[union-attr]
    target = (
        next((d.dns_target for d in view.domains if d.hostname == hostname), "") if view else ""
    )
    if args.json:
        output.print_json({"reply": reply, "hostname": hostname, "dns_target": target})
        return
    if target:
        output.warn("Configure your app's DNS provider to point to the DNS Target")
        output.warn(target)
        output.warn(f"(a CNAME record for {hostname}, or ALIAS/ANAME at the apex)")


async def domains_list(args: argparse.Namespace) -> None:
    app = _app(args)
    async with _control_plane() as cp:
        view = await _app_view(cp, app)
    if args.json:
        output.print_json(view.domains)
        return
    print(f"=== {app} Custom Domains")
    rows = [[d.hostname, "CNAME", d.dns_target or "", d.endpoint or ""] for d in view.domains]
    print(output.table(["Domain Name", "DNS Record Type", "DNS Target", "SNI Endpoint"], rows))


async def domains_remove(args: argparse.Namespace) -> None:
    app = _app(args)
    label = f"Removing {args.hostname} from {app}"
    await _change(args, label, RemoveDomain(app=app, hostname=args.hostname))


async def domains_update(args: argparse.Namespace) -> None:
    app = _app(args)
    label = f"Updating {args.hostname} to use {args.cert} certificate"
    command = UpdateDomain(app=app, hostname=args.hostname, endpoint=args.cert, bypass=args.bypass)
    await _change(args, label, command)


# -- certs --------------------------------------------------------------------------------


def _bundle_files(paths: list[str]) -> tuple[list[bytes], bytes]:
    """Certificate material to send as is, and the one key (to be sealed), from the files."""
    files = [_read(p) for p in paths]
    try:
        material = split_material(files, paths)
    except RejectedError as e:
        _fail(EXIT_REJECTED, f"{e.message} [{e.code}]")
    if len(material.keys) != 1:
        _fail(
            EXIT_REJECTED,
            f"Pass exactly one private key file (found {len(material.keys)} keys in "
            f"{', '.join(paths)}): usage is certs:add [INTERMEDIARY...] CRT KEY. [key_missing]",
        )
    return material.certificates, material.keys[0]


async def certs_add(args: argparse.Namespace) -> None:
    app = _app(args)
    certificates, key = _bundle_files(args.files)
    domains = [d for part in args.domains or [] for d in part.split(",") if d.strip()]
    async with _control_plane() as cp:
        gateway = await cp.gateway_key()
        command = AddCert(
            app=app,
            certificates=certificates,
            key=seal_for_gateway(key, gateway.public_key),
            endpoint_type=EndpointType(args.type),
            domains=domains,
            bypass=args.bypass,
        )
        _progress(f"Adding SSL to {app}", args)
        reply = _check(await cp.command(command))
        _done(args)
        view = await _app_view(cp, app) if await _projected(cp, reply.position) else None
        await _maybe_wait(cp, args, reply.position)
    if view is not None and not args.json:
        targets = {d.hostname: d.dns_target for d in view.domains}
        for event in reply.events:
            for host in _served(event, view):
                if targets.get(host):
                    print(f"{app} now served by {targets[host]} ({host})")
    _print_cert_result(reply, args, view)


def _served(event: object, view: AppView | None) -> list[str]:
    """The hostnames an event's endpoint serves: as the read model has it when there is one
    (a legacy SSL Endpoint serves the domains no SNI endpoint claims, not only its own)."""
    name = getattr(event, "endpoint", "")
    shown = next((e for e in view.endpoints if e.name == name), None) if view else None
    return shown.domains if shown is not None else list(getattr(event, "domains", None) or [])


def _print_cert_result(
    reply: Accepted, args: argparse.Namespace, view: AppView | None = None
) -> None:
    if args.json:
        output.print_json(reply)
        return
    for event in reply.events:
        certificate = getattr(event, "certificate", None)
        if certificate is not None:
            domains = _served(event, view)
            if domains:
                print(f"{getattr(event, 'endpoint', '')} serves {', '.join(domains)}")
            print(output.certificate_details(certificate))


async def certs_list(args: argparse.Namespace) -> None:
    app = _app(args)
    async with _control_plane() as cp:
        view = await _app_view(cp, app)
    if args.json:
        output.print_json(view.endpoints)
        return
    if not view.endpoints:
        print(f"{app} has no SSL certificates.\nUse certplane certs:add CRT KEY to add one.")
        return
    rows = [
        [
            e.name,
            ", ".join(e.certificate.sans) or e.certificate.common_name,
            output.when(e.certificate.not_after),
            str(e.certificate.trusted),
            e.endpoint_type.value.upper() if e.endpoint_type is EndpointType.SNI else "Endpoint",
            str(len(e.domains)),
        ]
        for e in view.endpoints
    ]
    print(output.table(["Name", "Common Name(s)", "Expires", "Trusted", "Type", "Domains"], rows))


def _pick_endpoint(view: AppView, name: str | None) -> Any:
    if name is not None:
        match = [e for e in view.endpoints if e.name == name]
        if not match:
            _fail(
                EXIT_REJECTED,
                f"{view.app} has no certificate named {name}: see `certplane certs -a {view.app}`.",
            )
        return match[0]
    if len(view.endpoints) == 1:
        return view.endpoints[0]
    if not view.endpoints:
        _fail(
            EXIT_REJECTED,
            f"{view.app} has no SSL certificates: add one with `certplane certs:add CRT KEY`.",
        )
    names = ", ".join(e.name for e in view.endpoints)
    _fail(
        EXIT_REJECTED,
        f"{view.app} has {len(view.endpoints)} certificates: say which with --name ({names}).",
    )


async def certs_info(args: argparse.Namespace) -> None:
    app = _app(args)
    async with _control_plane() as cp:
        view = await _app_view(cp, app)
    endpoint = _pick_endpoint(view, args.name)
    if args.json:
        output.print_json(endpoint)
        return
    print(f"Fetching SSL certificate {endpoint.name} info for {app}... done")
    print(output.certificate_details(endpoint.certificate))
    if endpoint.domains:
        print(f"Domains:        {', '.join(endpoint.domains)}")


async def certs_update(args: argparse.Namespace) -> None:
    app = _app(args)
    _confirm(args, app, "command replaces the certificate of")
    certificates, key = _bundle_files(args.files)
    async with _control_plane() as cp:
        gateway = await cp.gateway_key()
        command = UpdateCert(
            app=app,
            certificates=certificates,
            key=seal_for_gateway(key, gateway.public_key),
            name=args.name,
            bypass=args.bypass,
        )
        _progress(f"Updating SSL certificate {args.name or ''} for {app}".replace("  ", " "), args)
        reply = _check(await cp.command(command))
        _done(args)
        await _projected(cp, reply.position)
        await _maybe_wait(cp, args, reply.position)
    _print_cert_result(reply, args)


async def certs_remove(args: argparse.Namespace) -> None:
    app = _app(args)
    _confirm(args, app, "command removes an SSL certificate (and destroys its private key) from")
    label = f"Removing SSL certificate {args.name or ''} from {app}".replace("  ", " ")
    reply = await _change(args, label, RemoveCert(app=app, name=args.name))
    moved = getattr(reply.events[-1], "reassigned", {}) if reply.events else {}
    if not args.json:
        for host, endpoint in sorted(moved.items()):
            print(f"{host} is now served by {endpoint} (its certificate covers it)")
    if args.wait:
        async with _control_plane() as cp:
            await _maybe_wait(cp, args, reply.position)


def certs_chain(args: argparse.Namespace) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        material = split_material([_read(p) for p in args.files], args.files)
        if not material.certificates:
            raise RejectedError("cert_missing", "No certificate was found in the files.")
        chain = order_chain([x509.load_der_x509_certificate(c) for c in material.certificates])
    except RejectedError as e:
        _fail(EXIT_REJECTED, f"{e.message} [{e.code}]")
    if args.json:
        output.print_json([
            {"subject": one_line_name(c.subject), "issuer": one_line_name(c.issuer),
             "not_after": c.not_valid_after_utc, "fingerprint_sha256": c.fingerprint(SHA256()).hex(),
             "pem": c.public_bytes(Encoding.PEM).decode()}
            for c in chain
        ])  # fmt: skip
        return
    sys.stdout.write("".join(c.public_bytes(Encoding.PEM).decode() for c in chain))


def certs_key(args: argparse.Namespace) -> None:
    try:
        index = matching_key(_read(args.crt), [_read(k) for k in args.keys])
    except RejectedError as e:
        _fail(EXIT_REJECTED, f"{e.message} [{e.code}]")
    if index is None:
        why = [
            f"{args.keys[i]}: {e.message} [{e.code}]"
            for i, e in unusable_keys([_read(k) for k in args.keys]).items()
        ]
        _fail(
            EXIT_REJECTED, "\n".join([f"None of {', '.join(args.keys)} matches {args.crt}.", *why])
        )
    if args.json:
        output.print_json({"certificate": args.crt, "key": args.keys[index]})
        return
    print(args.keys[index])


async def domains_info(args: argparse.Namespace) -> None:
    app = _app(args)
    async with _control_plane() as cp:
        view = await _app_view(cp, app)
    wanted = _normalize_or_fail(args.hostname)
    match = [d for d in view.domains if d.hostname == wanted]
    if not match:
        _fail(
            EXIT_REJECTED, f"{wanted} is not a domain of {app}: see `certplane domains -a {app}`."
        )
    domain = match[0]
    if args.json:
        output.print_json(domain)
        return
    verified = {True: "yes", False: "no", None: "not checked"}[domain.dns_verified]
    print(f"=== {domain.hostname}")
    print(f"App:             {app}")
    print("DNS Record Type: CNAME")
    print(f"DNS Target:      {domain.dns_target}")
    print(f"DNS Verified:    {verified}")
    print(f"SNI Endpoint:    {domain.endpoint or '(none)'}")
    legacy = next(
        (e for e in view.endpoints if e.endpoint_type is EndpointType.ENDPOINT and not domain.endpoint
         and domain.hostname in e.domains), None,
    )  # fmt: skip
    if legacy is not None:
        print(
            f"SSL Endpoint:    {legacy.name} (legacy: it serves the domains no SNI endpoint does)"
        )


def _normalize_or_fail(hostname: str) -> str:

    try:
        return normalize_hostname(hostname)
    except RejectedError as e:
        _fail(EXIT_REJECTED, f"{e.message} [{e.code}]")


async def projections_list(args: argparse.Namespace) -> None:
    async with _control_plane() as cp:
        view = _expect(await cp.query(None, "projections"), ProjectionsView)
    if args.json:
        output.print_json(view.projections)
        return
    rows = [
        [
            p.name,
            str(p.checkpoint),
            str(p.head),
            str(p.lag_events),
            f"{p.lag_seconds:.1f}",
            p.state,
            p.detail,
        ]
        for p in view.projections
    ]
    headers = ["Projection", "Checkpoint", "Head", "Lag (events)", "Lag (s)", "State", "Detail"]
    print(output.table(headers, rows))


async def projections_skip(args: argparse.Namespace) -> None:
    async with _control_plane() as cp:
        command = SkipProjection(projection=args.name, position=args.position, reason=args.reason)
        _progress(f"Skipping position {args.position} of {args.name}", args)
        reply = _check(await cp.command(command))
        _done(args)
    if args.json:
        output.print_json(reply)
    else:
        print(f"Recorded in the log at position {reply.position}; the projector moves on.")


async def projections_rebuild(args: argparse.Namespace) -> None:
    from services.subjects import Subjects

    async with _control_plane() as cp:
        try:
            raw = await cp.raw_request(Subjects(cp.subjects.prefix).rebuild(args.name))
        except Unavailable as e:
            _fail(
                EXIT_UNREACHABLE,
                f"No projector is leading {args.name}, so nothing can rebuild it ({e}): start "
                "`certplane projector`, and check the name with `certplane projections`.",
            )
    reply = QUERY_REPLY_DECODER.decode(raw)
    if args.json:
        output.print_json(reply)
    else:
        print(
            f"Rebuilding {args.name} from position 0 into a new generation (projector {reply.instance});"
            " readers keep the current one until the swap. Follow it with `certplane projections`."
        )


def _when(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{text!r} is not a time: use ISO 8601, e.g. 2026-11-26T12:00:00Z."
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def audit_log(args: argparse.Namespace) -> None:
    app = _app(args)
    params = QueryParams(since=_when(args.since), until=_when(args.until), limit=args.limit)
    async with _control_plane() as cp:
        view = _expect(await cp.query(app, "audit", params), AuditView)
    if args.json:
        output.print_json(view.entries)
        return
    # Summary last: a certificate's runs to 200 characters, and padding every other row to
    # it made the table as wide as its longest line.
    rows = [
        [str(e.position), output.when(e.recorded_at), e.actor, e.action, e.object, e.summary]
        for e in view.entries
    ]
    print(f"=== {app} audit log")
    print(output.table(["Position", "When", "Actor", "Action", "Object", "Summary"], rows))


# -- services -----------------------------------------------------------------------------


def migrate_cmd(args: argparse.Namespace) -> None:
    from services.storage.database import ensure_database

    applied = asyncio.run(ensure_database(_settings().database_url))
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")


def gateway_cmd(args: argparse.Namespace) -> None:
    from services.gateway.service import run_gateway
    from services.runner import run_service

    run_service("gateway", lambda stop: run_gateway(_settings(), stop))


def projector_cmd(args: argparse.Namespace) -> None:
    from services.projectors.service import run_projectors
    from services.runner import run_service

    try:
        run_service("projector", lambda stop: run_projectors(_settings(), args.names, stop))
    except FileNotFoundError as e:  # a key file the operator has not given this host
        _fail(EXIT_USAGE, f"{e}. (Or run only some projections: certplane projector NAME...)")


# -- routers ------------------------------------------------------------------------------


async def routers_list(args: argparse.Namespace) -> None:
    async with _control_plane() as cp:
        seen = await last_reports(cp.nc, _settings())
        checkpoints = await cp.query(None, "checkpoints")
    now = dt.datetime.now(dt.UTC)
    head = checkpoints.head if isinstance(checkpoints, Checkpoints) else None
    if args.json:
        output.print_json(
            [
                {"status": s.status, "seen_at": s.at, "live": s.status in live(seen, now)}
                for s in sorted(seen.values(), key=lambda s: s.status.router_id)
            ]
        )
        return
    routers = live(seen, now)
    print(f"=== Routers ({len(routers)} live)")
    if routers:
        print(routers_table(seen, head, now))
    else:
        print("No router has reported recently. Start one with `certplane router`.")


async def wait_cmd(args: argparse.Namespace) -> None:
    async with _control_plane() as cp:
        routers, behind = await wait_for_routers(
            cp.nc, _settings(), args.position, args.wait_timeout
        )
    if args.json:
        output.print_json({"position": args.position, "live": len(routers), "behind": behind})
        if behind:
            raise SystemExit(EXIT_REJECTED)
        return
    if not print_wait_result(args.position, routers, behind):
        raise SystemExit(EXIT_REJECTED)


def _upstreams_from_env() -> list[str]:
    """CERTPLANE_ROUTER_UPSTREAMS: `APP=URL,APP=URL` (flags given later win)."""
    text = os.environ.get("CERTPLANE_ROUTER_UPSTREAMS", "")
    return [item.strip() for item in text.split(",") if item.strip()]


def router_cmd(args: argparse.Namespace) -> None:
    from services.router.service import Router, RouterOptions
    from services.runner import run_service

    try:
        options = RouterOptions(
            router_id=router_id_token(args.id) if args.id else "",
            host=args.host,
            https_port=args.https_port,
            http_port=args.http_port,
            upstreams=_upstreams_from_env() + (args.upstream or []),
            drain_timeout=args.drain_timeout,
            ready_file=args.ready_file or "",
        )
        router = Router(_settings(), options)
    except (ValueError, FileNotFoundError) as e:
        _fail(EXIT_USAGE, str(e))
    run_service("router", router.run)


def certs_generate(args: argparse.Namespace) -> None:
    from services.config import state_dir
    from services.devcerts import DevCA, cert_pem

    try:
        hosts = [normalize_hostname(h) for h in args.hostnames]
    except RejectedError as e:
        _fail(EXIT_REJECTED, f"{e.message} [{e.code}]")
    ca = DevCA.load_or_create(state_dir() / "dev-ca")
    leaf = ca.leaf(*hosts, key_kind=args.key_type)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = hosts[0].replace("*", "wildcard")
    crt, key, root = out / f"{stem}.crt", out / f"{stem}.key", out / "certplane-dev-ca.crt"
    crt.write_bytes(leaf.cert_pem + ca.intermediate.cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(leaf.key_pem)
    root.write_bytes(cert_pem(ca.root.cert))
    print(f"Generated a certificate for {', '.join(hosts)} signed by the certplane dev CA:")
    print(f"  {crt}  (certificate and intermediate)\n  {key}  (private key, mode 0600)")
    print(f"  {root}  (the dev root CA: trust it with curl --cacert)")
    print(f"Add it with: certplane certs:add {crt} {key} -a APP")


def dev_cmd(args: argparse.Namespace) -> None:
    from services.cli.dev import run_dev

    run_dev(args)


# -- parser -------------------------------------------------------------------------------


def _add(
    sub: Any,
    name: str,
    handler: Callable[[argparse.Namespace], Awaitable[None] | None],
    help_: str,
    *,
    app: bool = True,
    json: bool = True,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
    if app:
        p.add_argument("-a", "--app", help="the app (default: $CERTPLANE_APP)")
    if json:
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=handler, command_parser=p)
    return p


def _wait_flags(p: argparse.ArgumentParser, *, flag: str | None) -> None:
    if flag:
        p.add_argument(
            flag, action="store_true", help="return once every live router serves the change"
        )
    p.add_argument("--wait-timeout", type=float, default=30.0, help="seconds to wait for routers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certplane", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add(sub, "apps:create", apps_create, "create an app")
    p.add_argument("name", nargs="?", help="3-30 of a-z, 0-9 and '-' (made up when omitted)")
    _add(sub, "apps", apps_list, "list apps", app=False)
    p = _add(sub, "apps:destroy", apps_destroy, "permanently destroy an app")
    p.add_argument("name", nargs="?")
    p.add_argument("--confirm", metavar="APP", help="the app's name, to confirm")

    p = _add(sub, "domains:add", domains_add, "add a custom domain to an app")
    p.add_argument("hostname")
    _add(sub, "domains", domains_list, "list an app's custom domains")
    p = _add(sub, "domains:remove", domains_remove, "remove a custom domain from an app")
    p.add_argument("hostname")

    p = _add(sub, "domains:info", domains_info, "show a custom domain's DNS target and endpoint")
    p.add_argument("hostname")

    p = _add(sub, "domains:update", domains_update, "choose the SNI certificate serving a domain")
    p.add_argument("hostname")
    p.add_argument(
        "--cert", required=True, metavar="NAME", help="the certificate (certs lists them)"
    )
    p.add_argument(
        "--bypass", action="store_true", help="serve it even if the certificate does not cover it"
    )

    p = _add(sub, "certs:add", certs_add, "add an SSL certificate to an app")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="[INTERMEDIARY...] CRT KEY (or one .pem with both)"
    )
    p.add_argument(
        "--type", choices=["sni", "endpoint"], default="sni", help="endpoint type (default sni)"
    )
    p.add_argument(
        "--domains", action="append", help="domains (comma-separated) the certificate serves"
    )
    p.add_argument(
        "--bypass", action="store_true", help="skip the check of the certificate's domains"
    )
    _add(sub, "certs", certs_list, "list an app's SSL certificates")
    p = _add(sub, "certs:info", certs_info, "show an SSL certificate's details")
    p.add_argument("--name", help="the certificate (endpoint) name, if the app has several")
    p = _add(sub, "certs:update", certs_update, "replace an SSL certificate and key")
    p.add_argument("files", nargs="+", metavar="FILE", help="[INTERMEDIARY...] CRT KEY")
    p.add_argument("--name", help="the certificate (endpoint) name, if the app has several")
    p.add_argument("--confirm", metavar="APP", help="the app's name, to confirm")
    p.add_argument(
        "--bypass",
        action="store_true",
        help="keep every domain on this certificate, even those the new one does not cover",
    )
    p = _add(sub, "certs:remove", certs_remove, "remove an SSL certificate from an app")
    p.add_argument("--name", help="the certificate (endpoint) name, if the app has several")
    p.add_argument("--confirm", metavar="APP", help="the app's name, to confirm")
    for name in ("certs:add", "certs:update", "certs:remove"):
        _wait_flags(sub.choices[name], flag="--wait")
    p = _add(
        sub, "certs:generate", certs_generate,
        "create a certificate signed by a local dev CA (for trying certplane)", app=False,
        json=False,
    )  # fmt: skip
    p.add_argument("hostnames", nargs="+", metavar="HOSTNAME")
    p.add_argument("--out", default=".", help="directory to write to (default: here)")
    p.add_argument("--key-type", default="ec", choices=["ec", "rsa2048", "rsa4096"])
    p = _add(
        sub,
        "certs:chain",
        certs_chain,
        "print certificates in chain order (local)",
        app=False,
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p = _add(
        sub,
        "certs:key",
        certs_key,
        "say which key file matches a certificate (local)",
        app=False,
    )
    p.add_argument("crt", metavar="CRT")
    p.add_argument("keys", nargs="+", metavar="KEY")

    _add(
        sub,
        "projections",
        projections_list,
        "show projections' checkpoints, lag and state",
        app=False,
    )
    p = _add(
        sub, "projections:skip", projections_skip, "skip a dead-lettered event (audited)", app=False
    )
    p.add_argument("name", metavar="NAME", choices=NAMES)
    p.add_argument("position", metavar="POSITION", type=_position)
    p.add_argument(
        "--reason",
        default=NO_REASON,
        help="why it may be skipped (kept in the audit log with who skipped it, and when)",
    )
    p = _add(
        sub,
        "projections:rebuild",
        projections_rebuild,
        "rebuild a projection from position 0",
        app=False,
    )
    p.add_argument("name", metavar="NAME", choices=NAMES)
    p = _add(sub, "audit:log", audit_log, "what happened to an app, when, and who did it")
    p.add_argument("--since", help="ISO 8601 time")
    p.add_argument("--until", help="ISO 8601 time")
    p.add_argument("--limit", type=int, default=1000)
    p = _add(
        sub, "projector", projector_cmd, "run projectors (all by default)", app=False, json=False
    )
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="certificates, dns_targets, router_config, audit"
    )

    audit_commands.add_commands(sub, _add)
    _add(sub, "routers", routers_list, "list live routers and the config they serve", app=False)
    p = _add(sub, "wait", wait_cmd, "wait until every live router serves a log position", app=False)
    p.add_argument("position", metavar="POSITION", type=_position, help="from a command's reply")
    _wait_flags(p, flag=None)
    p = _add(sub, "router", router_cmd, "run a TLS router", app=False, json=False)
    p.add_argument("--id", help="router id (default: HOSTNAME-HTTPSPORT)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--https-port", type=int, default=8443, help="0 for any free port")
    p.add_argument("--http-port", type=int, default=8080, help="0 for any free port, -1 for none")
    p.add_argument(
        "--upstream", action="append", metavar="APP=URL",
        help="where an app's requests go (APP * for every app; URL `echo` answers itself)",
    )  # fmt: skip
    p.add_argument("--drain-timeout", type=float, default=10.0, help="seconds, on SIGTERM")
    p.add_argument("--ready-file", help="write the router's id and URLs here once listening")

    _add(
        sub,
        "migrate",
        migrate_cmd,
        "create the database if needed and apply migrations",
        app=False,
        json=False,
    )
    _add(
        sub,
        "gateway",
        gateway_cmd,
        "run a gateway (decides commands from NATS)",
        app=False,
        json=False,
    )
    p = _add(
        sub,
        "dev",
        dev_cmd,
        "run the whole control plane locally, for a demo",
        app=False,
        json=False,
    )
    p.add_argument("--demo", action="store_true", help="run a scripted demo against it, then exit")
    p.add_argument("--https-port", type=int, default=8443, help="the router's (0: any free port)")
    p.add_argument("--http-port", type=int, default=8080, help="the router's (0: any free port)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except UsageError as e:
        getattr(args, "command_parser", parser).print_usage(sys.stderr)
        _fail(EXIT_USAGE, str(e))
    except ConfigError as e:  # a CERTPLANE_* variable or a key file: say which, no traceback
        _fail(EXIT_USAGE, str(e))
    except Unavailable as e:  # the message names the URL it tried, or is given it here
        url = e.url or "unknown"
        _fail(EXIT_UNREACHABLE, str(e) if url in str(e) else f"{e} (URL tried: {url})")
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(EXIT_OK)


if __name__ == "__main__":
    main()
