"""The detection benchmark's offline protocol (benchmarks/detection.py) on a tiny BGL prefix: the table has
otad's row and the baselines' rows, every figure in range, and the JSON holds them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks import detection

DEVDATA = Path(__file__).resolve().parents[2].parent / "shared" / "devdata"


@pytest.mark.skipif(
    not (DEVDATA / "raw" / "bgl" / "BGL_2k.log").is_file(),
    reason=f"no devdata at {DEVDATA} (BGL_2k.log and bgl_to_otlp.py): the benchmark's datasets live outside the repo",
)
def test_offline_protocol_on_a_bgl_prefix(tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["--datasets", "bgl", "--offline-only", "--bgl-lines", "400", "--work", str(tmp_path / "work")]
    assert detection.main([*argv, "--devdata", str(DEVDATA), "--out", str(out)]) == 0

    table = capsys.readouterr().out
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| bgl")
    ]
    detectors = {r[2] for r in rows}
    assert {"otad", "severity", "template_freq", "iforest"} <= detectors, table
    for r in rows:
        for cell in r[5:10]:  # AUROC, AP, P, R, F1: a number in [0, 1] or "—"/empty
            if re.fullmatch(r"-?\d+\.\d+", cell):
                assert 0.0 <= float(cell) <= 1.0, r

    res = json.loads(out.read_text())
    off = res["datasets"]["bgl"]["offline"]
    assert off["train_rows"] == 200 and off["test_rows"] == 200
    figures = off["signals"]["all"]
    otad = figures["otad"]
    assert otad["rows"] == 200 and otad["labelled"] > 0
    assert otad["auroc"] is None or 0.0 <= otad["auroc"] <= 1.0
    assert set(figures["baselines"]) == {"severity", "template_freq", "iforest", "op_latency_z", "rolling_z"}
    assert 0.0 <= figures["baselines"]["severity"]["auroc"] <= 1.0
    assert res["machine"]["commit"] and res["table_markdown"] == table.split("\nwall time")[0]


@pytest.mark.skipif(
    not (DEVDATA / "raw" / "bgl" / "BGL_2k.log").is_file(),
    reason=f"no devdata at {DEVDATA}: the benchmark's datasets live outside the repo",
)
def test_bgl_as_unparsed_lines_carries_its_level_only_in_the_text(tmp_path, capsys):
    """bgl-lines sends each line (label column cut off) with no severity and no attributes but the uid; the
    row mapper reads the level from the line's header, so the severity baseline has something to rank."""
    from benchmarks.detection_lib.datasets import prepare_bgl, prepare_bgl_lines
    from receiver.jsonfiles import read_rows

    lines = prepare_bgl_lines(tmp_path / "a", DEVDATA, lambda _m: None, max_lines=400)
    parsed = prepare_bgl(tmp_path / "b", DEVDATA, lambda _m: None, max_lines=400)
    assert len(lines.times) == len(parsed.times) == 400
    assert sorted(lines.labels.values()) == sorted(parsed.labels.values())  # the same alerts, by kind
    text = lines.otlp.read_text()
    assert "severityNumber" not in text and "severityText" not in text
    assert not any(kind in text for kind in set(lines.labels.values()))  # the label column is cut off
    rows = read_rows([lines.otlp])
    assert {r.severity_id for r in rows} >= {1, 6}  # INFO and FATAL lines, read from the text

    out = tmp_path / "results.json"
    argv = ["--datasets", "bgl-lines", "--offline-only", "--bgl-lines", "400", "--work", str(tmp_path / "w")]
    assert detection.main([*argv, "--devdata", str(DEVDATA), "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["datasets"]["bgl-lines"]["offline"]["signals"]["all"]
    assert figures["otad"]["rows"] == 200 and figures["otad"]["labelled"] > 0
    assert figures["baselines"]["severity"]["auroc"] > 0.5
    assert "| bgl-lines | all | otad |" in capsys.readouterr().out


def test_offline_protocol_hands_back_the_training_rows_as_judged_while_fitting():
    """NAB's protocol scores every point: the first half comes from the fitted ensemble's out-of-sample
    judgement of its own training rows, the second from online scoring."""
    from benchmarks.detection_lib.offline import fit_and_score
    from tests.helpers import make_rows

    rows = make_rows(900, seed=3)
    train, test = rows[:600], rows[600:]
    scores, flags, _, judged = fit_and_score(train, test, lambda _msg: None, batch=100)
    assert len(scores) == len(flags) == len(test)
    assert judged is not None
    judged_rows, judged_scores, judged_flags = judged
    assert sorted(r.uid for r in judged_rows) == sorted(r.uid for r in train)
    assert len(judged_scores) == len(judged_flags) == len(train)
    assert judged_flags.dtype == bool and np.all((judged_scores >= 0) & (judged_scores <= 100))


def test_the_synthetic_web_app_set_runs_without_devdata(tmp_path, capsys):
    """The held-out web-application shape is made by the benchmark itself: its table rows are there on any
    machine, its faults are labelled by kind, and the baselines run beside otad on the same split; --plot
    draws its precision-recall curves."""
    out = tmp_path / "results.json"
    argv = ["--datasets", "webapp", "--offline-only", "--webapp-rows", "3000", "--work", str(tmp_path / "w")]
    argv += ["--plot", str(tmp_path / "plots")]
    assert detection.main([*argv, "--devdata", str(tmp_path / "no-devdata"), "--out", str(out)]) == 0
    png = (tmp_path / "plots" / "webapp-pr.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000  # a drawn chart, not an empty canvas

    table = capsys.readouterr().out
    detectors = {
        line.strip("|").split("|")[2].strip() for line in table.splitlines() if line.startswith("| webapp")
    }
    assert {"otad", "template_freq", "iforest"} <= detectors, table
    res = json.loads(out.read_text())
    d = res["datasets"]["webapp"]
    assert d["info"]["synthetic"] is True and d["rows"] == 3000
    assert 10 <= d["info"]["labelled"] <= 100  # 1.3 % of 3,000
    off = d["offline"]
    assert off["train_rows"] == off["test_rows"] == 1500
    otad = off["signals"]["all"]["otad"]
    assert 0.0 <= otad["auroc"] <= 1.0 and otad["labelled"] > 0
    assert otad["kinds_present"] == 4  # every fault kind recurs in the scored half


def test_the_web_app_set_in_json_and_logfmt_bodies(tmp_path):
    """The same records with every field in the body (no severity, no attributes but the uid): a JSON object
    or a logfmt line. The row mapper reads them back into the same message, level, status and duration."""
    from benchmarks.webapp_logs import write
    from receiver.jsonfiles import read_rows

    rows = {}
    for shape in ("attributes", "json", "logfmt"):
        faults = write(tmp_path / f"{shape}.jsonl", 600, 5, shape)
        rows[shape] = sorted(read_rows([tmp_path / f"{shape}.jsonl"]), key=lambda r: r.uid)
        if shape != "attributes":
            text = (tmp_path / f"{shape}.jsonl").read_text()
            assert "severityNumber" not in text and "status_code" not in text
    assert faults  # the same seed: the same faults in every shape
    for a, j, lf in zip(rows["attributes"], rows["json"], rows["logfmt"], strict=True):
        assert a.fields["message"] == j.fields["message"] == lf.fields["message"]
        assert a.severity_id == j.severity_id == lf.severity_id
        assert j.fields["unmapped.duration_ms"] == lf.fields["unmapped.duration_ms"]
        assert j.fields["unmapped.status"] == lf.fields["unmapped.status"] == a.fields["http_response.code"]

    out = tmp_path / "results.json"
    argv = ["--datasets", "webapp-json,webapp-logfmt", "--offline-only", "--webapp-rows", "3000"]
    argv += ["--work", str(tmp_path / "w"), "--devdata", str(tmp_path / "no-devdata"), "--out", str(out)]
    assert detection.main(argv) == 0
    res = json.loads(out.read_text())["datasets"]
    for name in ("webapp-json", "webapp-logfmt"):
        assert res[name]["info"]["shape"] == name.split("-")[1]
        assert 0.0 <= res[name]["offline"]["signals"]["all"]["otad"]["auroc"] <= 1.0


def test_the_simulator_with_its_logs_as_bare_lines(tmp_path):
    """sim-text: the same records and labels as sim, each log record only its line (no severity, no
    attributes but the uid, no trace context); spans and metric points untouched."""
    from benchmarks.detection_lib.datasets import prepare_sim
    from receiver.jsonfiles import read_rows

    plain = prepare_sim(tmp_path / "a", 3, 12.0, lambda _m: None)
    text = prepare_sim(tmp_path / "b", 3, 12.0, lambda _m: None, text_logs=True)
    assert text.name == "sim-text-3" and text.labels == plain.labels and text.labels
    logs = 0
    for line in text.otlp.read_text().splitlines():
        for rl in json.loads(line).get("resourceLogs", []):
            for sl in rl["scopeLogs"]:
                for rec in sl["logRecords"]:
                    logs += 1
                    assert [a["key"] for a in rec["attributes"]] == ["log.record.uid"]
                    assert "severityNumber" not in rec and "traceId" not in rec
    assert logs > 50
    a, b = read_rows([plain.otlp]), read_rows([text.otlp])
    assert sorted(r.uid for r in a) == sorted(r.uid for r in b)
    assert [r for r in a if r.signal != "logs"] == [r for r in b if r.signal != "logs"]
