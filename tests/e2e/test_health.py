"""Health probes as an orchestrator uses them: curl against /livez and /readyz."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

from services.config import Settings
from tests.conftest import run_cli
from tests.e2e.conftest import RouterProcess, ServiceProcess, Upstream, wait_for_gateway
from tests.e2e.test_router import shop_with_cert, tls_client
from tests.e2e.test_telemetry import free_port


def probe(port: int, path: str, *extra: str) -> tuple[int, str]:
    """(HTTP status, body) from curl."""
    out = subprocess.run(
        ["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", *extra,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True,
    )  # fmt: skip
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def test_gateway_probes_answer_live_and_ready(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    ServiceProcess(
        settings, ["gateway"], tmp_path / "gateway.log",
        CERTPLANE_HEALTH_PORT=str(port), CERTPLANE_HEALTH_HOST="127.0.0.1",
    ).start()  # fmt: skip
    wait_for_gateway(settings)
    assert probe(port, "/livez") == (200, "ok\n")
    assert probe(port, "/readyz") == (200, "ok\n")
    assert probe(port, "/metrics")[0] == 404
    assert probe(port, "/readyz", "-X", "POST")[0] == 405


def test_a_draining_router_is_alive_but_not_ready(
    settings: Settings, projector_process: ServiceProcess, upstream: Upstream, ca, ca_file,
    tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    router = RouterProcess(
        settings, tmp_path, "router-probed", upstream.url,
        CERTPLANE_HEALTH_PORT=str(port), CERTPLANE_HEALTH_HOST="127.0.0.1",
    ).start()  # fmt: skip
    # ready once its first full config is applied (the ready file comes before that)
    deadline = time.monotonic() + 15
    while (answer := probe(port, "/readyz")) != (200, "ok\n") and time.monotonic() < deadline:
        assert answer == (503, "the first full config from ROUTER_CONFIG is not applied yet\n")
        time.sleep(0.1)
    assert answer == (200, "ok\n")
    shop_with_cert(settings, ca, tmp_path)
    client = tls_client(ca_file, "www.shop.test", router.https_port)
    finished: dict[str, int] = {}

    def slow_request() -> None:
        client.request("GET", "/slow/2")
        finished["status"] = client.getresponse().status

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)  # the request is at the upstream
    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while (answer := probe(port, "/readyz"))[0] != 503:
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)
    assert "draining" in answer[1]
    assert probe(port, "/livez") == (200, "ok\n")  # still alive: a probe must not kill it
    thread.join(10)
    client.close()
    assert finished.get("status") == 200
    assert router.proc.wait(10) == 0


def test_bad_probe_settings_and_unknown_projections_exit_2(settings: Settings) -> None:
    bad_port = run_cli(settings, "gateway", CERTPLANE_HEALTH_PORT="http")
    assert bad_port.returncode == 2 and "CERTPLANE_HEALTH_PORT" in bad_port.stderr
    unknown = run_cli(settings, "projector", "certificate")
    assert unknown.returncode == 2, unknown.stderr
    assert "unknown projection(s) certificate: choose from" in unknown.stderr
    assert "Traceback" not in bad_port.stderr + unknown.stderr
