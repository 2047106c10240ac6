"""`otad report` end to end: simulated telemetry with labels, `otad train`, `otad report --input --labels`, and
the page rendered by headless Chromium (Debian's `chromium`), which must show every panel with its chart and
fetch nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from receiver import cli, report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return CHROMIUM


@pytest.fixture(scope="module")
def page(chromium, tmp_path_factory):
    """The report of a short labelled simulation, scored by a model trained on its first half."""
    tmp = tmp_path_factory.mktemp("report")
    sim = tmp / "sim"
    subprocess.run(
        [sys.executable, "-m", "receiver.cli", "simulate", "--output-dir", str(sim), "--duration", "600",
         "--rate", "3", "--anomaly-rate", "0.2", "--seed", "4"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    data = str(tmp / "data")
    args = ["--data-dir", data, "--input", str(sim / "otlp.jsonl")]
    assert cli.main(["train", *args, "--train-fraction", "0.5", "--epochs", "2"]) == 0
    out = tmp / "report.html"
    assert cli.main(["report", *args, "--labels", str(sim / "labels.csv"), "--output", str(out)]) == 0
    return out


def _chromium(binary: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=timeout)


def test_chromium_renders_every_panel(chromium, page):
    result = _chromium(chromium, "--dump-dom", page.as_uri())
    dom = result.stdout
    assert result.returncode == 0 and "<h1>otad report</h1>" in dom, result.stderr[-2000:]
    sections = dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>', dom, re.S))
    assert list(sections) == list(report.PANELS)
    for panel in ("timeline", "scores", "pr-curve", "embedding-map"):
        assert "<svg" in sections[panel], f"{panel} has no chart: {sections[panel][:300]}"
    assert sections["explanations"].count('class="explanation"') >= 3
    assert "nearest normal rows" in sections["explanations"]
    assert "AP " in sections["pr-curve"] and sections["embedding-map"].count("<circle") > 100
    assert sections["scores"].count("<svg") >= 3  # the combined score and the members


def test_chromium_takes_a_screenshot(chromium, page, tmp_path):
    shot = tmp_path / "report.png"
    result = _chromium(chromium, "--window-size=1200,3200", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.stat().st_size > 20_000, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
