"""`certplane dev`: the whole control plane on one machine, for a first run or a demo.

One supervised process tree: embedded PostgreSQL/NATS where none are reachable, then a
gateway, the projectors (router_config in a process of its own) and one router as child processes (restarted with backoff if one
dies), all stopped together on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.audit.keys import load_signing_key
from services.cli.client import ControlPlane
from services.config import Settings, redact, state_dir
from services.devcerts import DevCA
from services.embedded import servers_for
from services.gateway.key_custody import load_master_key
from services.health import health_port
from services.projectors.service import PROCESS_GROUPS
from services.router_key import load_router_private_key
from services.runner import setup_logging
from services.storage.database import ensure_database
from services.telemetry import METRIC_EXPORTERS, exporters, metrics_port

RESTART_SCHEDULE = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds before restarting a dead child
STOP_GRACE = 15.0


def _demo_files(state: Path) -> dict[str, Path]:
    """www.demo.test (and *.demo.test) signed by the dev CA `certs:generate` also uses."""
    ca = DevCA.load_or_create(state / "dev-ca")
    directory = state / "demo"
    files = {
        "crt": directory / "server.crt",
        "chain": directory / "chain.crt",
        "key": directory / "server.key",
        "ca": directory / "ca.crt",
    }
    if not files["crt"].exists():
        ca.write(directory, ca.leaf("www.demo.test", "*.demo.test"))
    return files


@dataclasses.dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float = 0.0
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # this child's own

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *self.args], env={**env, **self.env}
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in {STOP_GRACE:.0f}s: killing it", flush=True)
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    """Starts the children, restarts one that dies (with backoff), stops them all."""

    def __init__(self, children: list[Child], env: dict[str, str]) -> None:
        self.children, self.env = children, env

    def __enter__(self) -> Supervisor:
        for child in self.children:
            child.start(self.env)
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            child.stop()
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children:
            child.wait(deadline)

    def check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            assert child.proc is not None
            if child.restart_at and now >= child.restart_at:
                child.restart_at = 0.0
                child.start(self.env)
            elif not child.restart_at and (code := child.proc.poll()) is not None:
                delay = RESTART_SCHEDULE[min(child.restarts, len(RESTART_SCHEDULE) - 1)]
                child.restarts += 1
                child.restart_at = now + delay
                print(f"{child.name} exited ({code}); restarting it in {delay:.0f}s", flush=True)


def _exports(settings: Settings) -> list[str]:
    """The variables another terminal needs to reach this control plane."""
    defaults = Settings().environment()
    wanted = ("CERTPLANE_NATS_URL", "CERTPLANE_PREFIX", "CERTPLANE_ROUTER_STATUS_STREAM")
    env = settings.environment()
    lines = [f"  export {k}={shlex.quote(env[k])}" for k in wanted if env[k] != defaults[k]]
    # The audit:* commands read the log itself (auditors need no gateway), so they need it.
    url = env["CERTPLANE_DATABASE_URL"]
    if url != defaults["CERTPLANE_DATABASE_URL"]:
        shown = redact(url)
        note = "  # its password left out: use yours" if shown != url else ""
        lines.append(f"  export CERTPLANE_DATABASE_URL={shlex.quote(shown)}{note}")
    if os.environ.get("CERTPLANE_STATE_DIR"):
        lines.append(f"  export CERTPLANE_STATE_DIR={shlex.quote(str(state_dir()))}")
    return lines


def _ports_per_child(children: list[Child]) -> list[str]:
    """With Prometheus metrics or health probes on, one port per child for each, counting up
    from CERTPLANE_METRICS_PORT / CERTPLANE_HEALTH_PORT (every process serves its own); the
    lines that say where."""
    wanted = []
    if "prometheus" in exporters("CERTPLANE_METRICS_EXPORT", METRIC_EXPORTERS):
        wanted.append(("CERTPLANE_METRICS_PORT", metrics_port(), "metrics", "/metrics"))
    if (probes := health_port()) is not None:
        wanted.append(("CERTPLANE_HEALTH_PORT", probes, "probes", "/readyz"))
    lines = []
    for variable, base, label, path in wanted:
        for offset, child in enumerate(children):
            port = base + offset if base else 0
            child.env[variable] = str(port)
            where = f"http://127.0.0.1:{port}{path}" if port else "a free port (see its log)"
            lines.append(f"  {label:10s} {where}  ({child.name})")
    return lines


def _instructions(
    settings: Settings, router: dict[str, Any], files: dict[str, Path], metrics: list[str]
) -> str:
    https, http = [*router["addresses"], ""][:2]
    port = https.rsplit(":", 1)[1]
    lines = [
        "",
        "certplane is running:",
        f"  event log  {redact(settings.database_url)}",
        f"  gateway    {redact(settings.nats_url)} (subjects {settings.prefix}.cmd.>)",
        f"  projectors certificates, dns_targets, router_config (KV {settings.router_bucket}), audit,"
        " sealer",
        f"  router     {router['router_id']}: {https}  {http}",
        *metrics,
        "",
        "Try it from another terminal:",
        *_exports(settings),
        "  certplane apps:create demo",
        "  certplane domains:add www.demo.test -a demo",
        "  certplane certs:generate www.demo.test --out ./certs   # or bring your own",
        "  certplane certs:add ./certs/www.demo.test.crt ./certs/www.demo.test.key -a demo --wait",
        "  certplane routers",
        "  certplane audit:history -a demo && certplane audit:verify",
        f"  curl --resolve www.demo.test:{port}:127.0.0.1 --cacert ./certs/certplane-dev-ca.crt"
        f" https://www.demo.test:{port}/",
        "",
        f"(The demo's own files are in {files['crt'].parent}.) Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _cli(env: dict[str, str], *args: str) -> None:
    print(f"$ certplane {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, check=True)


def _fetch(url_port: str, files: dict[str, Path]) -> None:
    """Show the certificate served, as `curl --resolve` would (Python's ssl if no curl)."""
    port = url_port.rsplit(":", 1)[1]
    url = f"https://www.demo.test:{port}/"
    curl = ["curl", "-sS", "--resolve", f"www.demo.test:{port}:127.0.0.1"]
    curl += ["--cacert", str(files["ca"]), url]
    print(f"$ {shlex.join(curl)}", flush=True)
    if shutil.which("curl"):
        subprocess.run(curl, check=True)
        return
    context = ssl.create_default_context(cafile=str(files["ca"]))
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="www.demo.test") as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: www.demo.test:{port}\r\n"
                        "Connection: close\r\n\r\n".encode())  # fmt: skip
            response = b"".join(iter(lambda: tls.recv(65536), b""))
    print(response.partition(b"\r\n\r\n")[2].decode(), flush=True)


def _run_demo(env: dict[str, str], router: dict[str, Any], files: dict[str, Path]) -> None:
    app = f"demo-{secrets.token_hex(3)}"
    _cli(env, "apps:create", app)
    _cli(env, "domains:add", "www.demo.test", "-a", app)
    _cli(env, "certs:add", str(files["chain"]), str(files["crt"]), str(files["key"]), "-a", app,
         "--wait")  # fmt: skip
    _cli(env, "certs", "-a", app)
    _cli(env, "domains", "-a", app)
    _fetch(router["addresses"][0], files)
    _cli(env, "routers")
    _cli(env, "audit:log", "-a", app)
    _cli(env, "audit:history", "-a", app)
    _cli(env, "projections")
    _cli(env, "audit:verify", "--allow-unsealed")
    _cli(env, "apps:destroy", app, "--confirm", app)


async def _gateway_answers(settings: Settings) -> bool:
    try:
        async with ControlPlane(settings.nats_url, settings.prefix, timeout=1.0) as cp:
            await cp.gateway_key()
        return True
    except Exception:
        return False


def _wait_ready(supervisor: Supervisor, settings: Settings, ready: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        supervisor.check()
        if ready.exists() and asyncio.run(_gateway_answers(settings)):
            return dict(json.loads(ready.read_text()))
        time.sleep(0.2)
    raise SystemExit("the gateway or the router did not start within 60s: see the output above")


def run_dev(args: argparse.Namespace) -> None:
    setup_logging("certplane-dev")
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    files = _demo_files(state)
    base = Settings.from_env()
    if not base.extra_ca_file:  # so the dev CA's certificates show as trusted
        base = dataclasses.replace(base, extra_ca_file=str(state / "dev-ca" / "root.crt"))
    with servers_for(base, state) as settings:
        applied = asyncio.run(ensure_database(settings.database_url))
        print(f"Database ready ({len(applied)} migration(s) applied).", flush=True)
        load_master_key(settings, create=True)
        load_router_private_key(settings, create=True)
        load_signing_key(settings, create=True)
        env = {**os.environ, **settings.environment()}
        env.setdefault("CERTPLANE_LOG_LEVEL", "WARNING")  # keep the demo's output readable
        ready = state / "router.ready"
        ready.unlink(missing_ok=True)
        children = [
            Child("gateway", ["gateway"]),
            *(
                Child(f"projector {' '.join(group)}", ["projector", *group])
                for group in PROCESS_GROUPS
            ),
            Child("router", ["router", "--https-port", str(args.https_port), "--http-port",
                             str(args.http_port), "--upstream", "*=echo", "--ready-file",
                             str(ready)]),
        ]  # fmt: skip
        metrics = _ports_per_child(children)
        stop = {"now": False}

        def on_signal(*_: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        with Supervisor(children, env) as supervisor:
            router = _wait_ready(supervisor, settings, ready)
            if args.demo:
                _run_demo({**env, "CERTPLANE_LOG_LEVEL": "WARNING"}, router, files)
                print("Demo complete.", flush=True)
                return
            print(_instructions(settings, router, files, metrics), flush=True)
            while not stop["now"]:
                supervisor.check()
                time.sleep(0.2)
            print("Stopping...", flush=True)
