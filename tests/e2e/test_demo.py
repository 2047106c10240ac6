"""`otad demo` (what `make demo` runs), short, then `otad report` over what its otad stored: the simulator sends 3 simulated minutes through rotel (a real
Collector) to otad, which trains its first model on the first records and exports anomaly events to the demo's
sink, which prints them as they arrive."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

rotel = pytest.importorskip("rotel", reason="rotel (the `test` extra) is not installed")


def test_a_short_demo_prints_anomalies_from_the_sink(tmp_path):
    agent = Path(rotel.__file__).parent / "rotel-agent"
    try:
        subprocess.run([str(agent), "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"rotel-agent from the rotel wheel cannot run on this machine: {exc}")
    result = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "demo", "--duration", "180", "--rate", "10", "--speedup", "30",
         "--anomaly-rate", "0.3", "--bootstrap-rows", "1500", "--epochs", "2", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert re.search(r"simulator -> rotel 127\.0\.0\.1:\d+ -> otad :\d+ -> sink", out), out[:500]
    events = [
        line
        for line in out.splitlines()
        if re.match(r"\d\d:\d\d:\d\d +\d+\.\d +(x\d+)? +(logs|traces|metrics) ", line)
    ]
    summary = re.search(r"otad demo: (\d+) anomaly events printed", out)
    assert summary and int(summary.group(1)) == len(events) > 0, out[-3000:]
    assert (tmp_path / "rotel.log").exists()

    # What the demo's otad stored, drawn by `otad report` without --input (the store, not files).
    page = tmp_path / "report.html"
    drawn = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "report", "--data-dir", str(tmp_path), "--output", str(page)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    html = page.read_text()
    for panel in ("timeline", "explanations", "scores", "embedding-map"):
        assert f'<section id="{panel}"><h2>' in html
    assert html.count('class="explanation"') >= 1 and html.count("<circle") > 100
