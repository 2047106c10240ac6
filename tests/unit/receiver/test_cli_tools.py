"""The command line's habits: unknown OTAD_* variables, `otad validate`, one-line operator errors, progress
without a terminal, and the report page (rendered from made-up data; tests/e2e renders a real one in Chromium)."""

from __future__ import annotations

import errno
import io
import re

import numpy as np
import pytest

from receiver import cli, cli_tools, report
from receiver.progress import Progress


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.upper().startswith(("OTAD_", "OTEL_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_unknown_variables_are_warned_with_the_closest_setting():
    warnings = cli_tools.unknown_env(
        {
            "OTAD_EXPORT_ENDPIONT": "x",
            "OTAD_DATA_DIR": "d",
            "OTAD_LITE_NICE": "1",
            "OTAD_WHATEVER": "1",
            "PATH": "/",
        }
    )
    assert warnings == [
        "otad: warning: OTAD_EXPORT_ENDPIONT is not an otad setting; did you mean OTAD_EXPORT_ENDPOINT?",
        "otad: warning: OTAD_WHATEVER is not an otad setting (otad ignores it)",
    ]


def test_every_command_warns_first(clean_env, tmp_path, capsys):
    clean_env.setenv("OTAD_BOOTSTRAP_ROW", "10")
    assert cli.main(["validate", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "OTAD_BOOTSTRAP_ROW is not an otad setting; did you mean OTAD_BOOTSTRAP_ROWS?" in err


def test_validate_accepts_a_usable_configuration(clean_env, tmp_path, capsys):
    assert cli.main(["validate", "--data-dir", str(tmp_path / "new" / "dir")]) == 0
    assert "the configuration is usable" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"OTAD_HTTP_ENDPOINT": "localhost:4317"}, "OTAD_HTTP_ENDPOINT"),
        ({"OTAD_GRPC_ENDPOINT": "localhost:99999"}, "OTAD_GRPC_ENDPOINT"),
        ({"OTAD_TLS_CERT_FILE": "/no/such.pem", "OTAD_TLS_KEY_FILE": "/no/such.key"}, "OTAD_TLS_CERT_FILE"),
        ({"OTAD_AUTH_TOKEN_FILE": "/no/tokens"}, "OTAD_AUTH_TOKEN_FILE"),
        ({"OTAD_BATCH_ROWS": "many"}, "OTAD_BATCH_ROWS"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317",
                "OTEL_EXPORTER_OTLP_CERTIFICATE": "/no/ca",
            },
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
    ],
)
def test_validate_names_the_variable_and_exits_2(clean_env, tmp_path, capsys, env, variable):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert cli.main(["validate", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and variable in err[0], err


def test_validate_refuses_a_data_dir_that_is_a_file(clean_env, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["validate", "--data-dir", str(tmp_path / "file")]) == 2
    assert "OTAD_DATA_DIR" in capsys.readouterr().err


def test_a_missing_input_file_is_one_line(clean_env, tmp_path, capsys):
    code = cli.main(["train", "--data-dir", str(tmp_path), "--input", str(tmp_path / "missing.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"otad train: cannot open {tmp_path / 'missing.jsonl'}: No such file or directory"
    ]


def test_a_port_in_use_is_one_line(clean_env, capsys):
    import argparse

    def serve(_):
        raise OSError(
            errno.EADDRINUSE, "cannot listen on localhost:4317 (OTAD_GRPC_ENDPOINT): address in use"
        )

    assert cli_tools.run(serve, argparse.Namespace(command="serve")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "OTAD_GRPC_ENDPOINT" in err[0] and "Traceback" not in err[0]


def test_progress_without_a_terminal_writes_plain_lines(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    bar = Progress(10, "scoring", every_s=3600)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert re.fullmatch(r"  scoring 10/10 rows \([\d,]+/s\)\n", out.getvalue()), out.getvalue()


def test_the_report_is_one_page_with_every_panel_and_nothing_to_fetch():
    rng = np.random.default_rng(0)
    data = report.ReportData("made up", "v1", rows=500, threshold=40.0)
    data.anomalies = [
        {"time_ms": 1_762_041_600_000 + i * 60_000, "service": s, "signal": "logs", "score": 50.0 + i,
         "explanation": f"latency <b>{i}</b>", "record": "GET /cart", "neighbors": ["GET /cart/1 served"]}
        for i, s in enumerate(["checkout", "auth"] * 5)
    ]  # fmt: skip
    data.scores = {"combined": rng.uniform(0, 60, 500), "knn": rng.uniform(0, 30, 500)}
    data.pr = {
        "precision": np.array([0.5, 1.0]),
        "recall": np.array([1.0, 0.0]),
        "ap": 0.75,
        "point": (0.5, 0.8),
    }
    data.map_xy, data.map_flagged = rng.normal(size=(50, 2)), rng.random(50) < 0.1
    page = report.render(data)
    for panel in report.PANELS:
        assert f'<section id="{panel}">' in page
    assert page.count("<svg") >= 5 and "latency &lt;b&gt;" in page
    assert not re.search(r"<script|<link|<img|src=|href=|url\(|@import", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}  # a namespace only


def test_anomalies_follow_prints_each_new_anomaly_once(clean_env, tmp_path, monkeypatch, capsys):
    import argparse
    import time

    now = int(time.time() * 1000)
    a1 = {"uid": "f1", "detected_ms": now + 10, "time_ms": now, "score": 91.0, "signal": "logs",
          "service": "auth", "explanation": "38 failed logins in 60 s"}  # fmt: skip
    a2 = {**a1, "uid": "f2", "detected_ms": now + 20, "explanation": "latency 2,310 ms"}
    answers = [[], [a1], [a1, a2], [a2]]
    asked = []

    class Store:
        def latest_anomalies(self, limit, *, service=None, min_score=None, since_ms=None):
            asked.append(since_ms)
            return answers[len(asked) - 1]

        def close(self):
            pass

    monkeypatch.setattr("receiver.service.open_store", lambda settings: Store())
    args = argparse.Namespace(data_dir=tmp_path, milvus_uri=None, service=None, min_score=None, interval=0.0)
    assert cli_tools.follow(args, polls=4) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("38 failed logins in 60 s") and lines[1].endswith("2,310 ms")
    assert asked[0] == asked[1] >= now - 1 and asked[2] == a1["detected_ms"] and asked[3] == a2["detected_ms"]
