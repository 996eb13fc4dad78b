"""`certplane dev`: the whole control plane on one machine, for a first run or a demo."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from services.config import Settings, state_dir
from services.devcerts import DevCA
from services.embedded import servers_for
from services.gateway.key_custody import load_master_key
from services.gateway.service import Gateway
from services.projectors.service import run_projectors
from services.router_key import load_router_private_key
from services.runner import setup_logging, tune_gc
from services.storage.database import ensure_database, redact


def _demo_files(state: Path) -> dict[str, Path]:
    directory = state / "demo"
    if (directory / "server.crt").exists():
        return {
            k: directory / n
            for k, n in {
                "crt": "server.crt",
                "chain": "chain.crt",
                "key": "server.key",
                "ca": "ca.crt",
            }.items()
        }
    ca = DevCA.create("certplane demo")
    return ca.write(directory, ca.leaf("www.demo.test", "*.demo.test"))


def _instructions(settings: Settings, files: dict[str, Path]) -> str:
    env = []
    if settings.nats_url != Settings().nats_url:
        env.append(f"  export CERTPLANE_NATS_URL={settings.nats_url}")
    lines = [
        "",
        "certplane is running:",
        f"  event log  {redact(settings.database_url)}",
        f"  gateway    {settings.nats_url} (subjects {settings.prefix}.cmd.>)",
        f"  projectors certificates, dns_targets, router_config (KV {settings.router_bucket}), audit",
        "",
        "Try it from another terminal:",
        *env,
        "  certplane apps:create demo",
        "  certplane domains:add www.demo.test -a demo",
        f"  certplane certs:add {files['chain']} {files['crt']} {files['key']} -a demo",
        "  certplane certs -a demo",
        "  certplane certs:info -a demo",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "services.cli.main", *args]
    print(f"$ certplane {shlex.join(args)}", flush=True)
    subprocess.run(command, check=True)


def _run_demo(files: dict[str, Path]) -> None:
    app = f"demo-{secrets.token_hex(3)}"
    _cli("apps:create", app)
    _cli("domains:add", "www.demo.test", "-a", app)
    _cli("certs:add", str(files["chain"]), str(files["crt"]), str(files["key"]), "-a", app)
    _cli("certs", "-a", app)
    _cli("domains", "-a", app)
    _cli("audit:log", "-a", app)
    _cli("projections")
    _cli("apps:destroy", app, "--confirm", app)


def run_dev(args: argparse.Namespace) -> None:
    setup_logging()
    tune_gc()
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    files = _demo_files(state)
    base = Settings.from_env()
    if not base.extra_ca_file:
        base = dataclasses.replace(base, extra_ca_file=str(files["ca"]))
    with servers_for(base, state) as settings:
        applied = asyncio.run(ensure_database(settings.database_url))
        print(f"Database ready ({len(applied)} migration(s) applied).", flush=True)
        load_master_key(settings, create=True)
        load_router_private_key(settings, create=True)
        os.environ.setdefault("CERTPLANE_MASTER_KEY_FILE", str(settings.master_key_file))
        asyncio.run(_serve(settings, files, demo=args.demo))


async def _serve(settings: Settings, files: dict[str, Path], *, demo: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(settings):
        projectors = asyncio.create_task(run_projectors(settings, [], stop))
        try:
            if demo:
                await asyncio.to_thread(_run_demo, files)
                print("Demo complete.", flush=True)
                return
            print(_instructions(settings, files), flush=True)
            await stop.wait()
        finally:
            stop.set()
            await projectors
