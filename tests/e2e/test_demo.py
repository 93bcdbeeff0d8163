"""`cascade-connector demo` with small counts: it runs to the end, exits 0, and its final table
says the sink equals the sites' truth and accounts for the storm."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from tests.support.cli import run


def test_demo_converges_and_reports(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = run(
        "demo",
        "--sites",
        "2",
        "--servers",
        "150",
        "--volumes",
        "150",
        "--ports",
        "300",
        "--storm-flaps",
        "2",
        "--storm-seconds",
        "3",
        "--interval",
        "1",
        "--max-rate",
        "5000",
        "--bootstrap",
        kafka_bootstrap,
        "--workdir",
        str(tmp_path),
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    report = out.stdout[out.stdout.index("The storm, accounted") :]
    assert "equal (1,200 objects)" in report

    def figure(label: str) -> int:
        match = re.search(re.escape(label) + r"\s+([\d,]+)", report)
        assert match, f"{label!r} not in the report:\n{report}"
        return int(match.group(1).replace(",", ""))

    changes = figure("status changes at the sites")
    published = figure("records published (incl. heartbeats)")
    committed = figure("records committed at the top")
    rows = figure("rows written to the top layer")
    assert changes > 600, "the storm flapped too few objects"
    # Rows and committed records come from one scrape of the consumer, so they compare exactly;
    # published comes from the pollers, scraped a moment apart, so a heartbeat in flight at the
    # start of the window can be committed without being counted as published: compare it with
    # the site's changes only.
    assert 0 < rows <= committed < changes
    assert 0 < published < changes
    assert figure("push every change: top-layer calls") == changes
    assert figure("top-layer calls (batches)") >= 1
    # Nothing the demo started is left running: its sites and metrics ports are closed.
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", out.stdout)]
    assert len(ports) >= 5
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
