"""Unit tests for model.evaluate: metrics against hand-computed values, the join, the report, baselines."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math

import numpy as np
import pytest

from model.evaluate import (
    Report,
    auroc,
    average_precision,
    baseline_score_rows,
    evaluate,
    format_report,
    load_labels,
    load_scores,
    plot_pr,
    pr_curve,
    random_baseline,
    write_score_file,
    zscore_baseline,
)
from receiver import evaluate_cmd

# -- metrics ----------------------------------------------------------------------------------------------

# (y, s, AUROC, AP), each worked out by hand in the comment
METRIC_CASES = [
    # pairs pos>neg: 0.8 beats both, 0.35 beats 0.1 only -> 3/4. AP: 0.5*1 (at 0.8) + 0.5*2/3 (at 0.35)
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75, 5 / 6),
    # tie at 0.5 counts half: (0.5 + 0.5 + 1 + 1) / 4. AP: 0.5*1 (at 0.9) + 0.5*2/4 (at 0.5)
    ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.9], 0.75, 0.75),
    # everything tied: one threshold, precision 1/2 at recall 1
    ([0, 1], [3.0, 3.0], 0.5, 0.5),
    ([0, 0, 1], [1.0, 2.0, 3.0], 1.0, 1.0),
    # ranked last: AUROC 0; AP 1/3 (at 1.0: precision 1/3, recall 1)
    ([1, 0, 0], [1.0, 2.0, 3.0], 0.0, 1 / 3),
]


@pytest.mark.parametrize(("y", "s", "expected_auroc", "expected_ap"), METRIC_CASES)
def test_auroc_and_average_precision_match_hand_computed(y, s, expected_auroc, expected_ap):
    assert auroc(np.array(y), np.array(s)) == pytest.approx(expected_auroc)
    assert average_precision(np.array(y), np.array(s)) == pytest.approx(expected_ap)


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_one_class_gives_nan_with_a_clear_message(y, caplog):
    with caplog.at_level(logging.WARNING, logger="model.evaluate"):
        assert math.isnan(auroc(np.array(y), np.array([1.0, 2.0, 3.0])))
    assert "AUROC is undefined (nan): all 3 rows are" in caplog.text


def test_average_precision_without_positives_is_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="model.evaluate"):
        assert math.isnan(average_precision(np.array([0, 0]), np.array([1.0, 2.0])))
    assert "no positive labels" in caplog.text


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 2], [1.0, 2.0], "0 or 1"),
        ([0, 1], [1.0, np.nan], "finite"),
        ([0, 1], [1.0], "equal length"),
        ([], [], "no rows"),
    ],
)
def test_bad_metric_input_raises(y, s, message):
    with pytest.raises(ValueError, match=message):
        auroc(np.array(y, dtype=int), np.array(s, dtype=float))


def test_pr_curve_matches_sklearn_convention():
    precision, recall, thresholds = pr_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    np.testing.assert_allclose(thresholds, [0.1, 0.35, 0.4, 0.8])
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.5, 0.5, 0.0])


def test_pr_curve_recall_is_monotonic():
    rng = np.random.default_rng(7)
    y = (rng.random(500) < 0.1).astype(int)
    s = np.round(rng.random(500) + y, 2)  # rounding makes ties
    precision, recall, thresholds = pr_curve(y, s)
    assert len(precision) == len(recall) == len(thresholds) + 1
    assert (np.diff(recall) <= 0).all() and recall[0] == 1.0 and recall[-1] == 0.0
    assert (np.diff(thresholds) > 0).all()


# -- evaluate() on small files ----------------------------------------------------------------------------


def _score_row(uid, signal, t, score, is_anomaly):
    return {
        "uid": uid,
        "signal": signal,
        "time_unix_nano": t,
        "service": "checkout",
        "score": score,
        "raw_score": score / 100,
        "threshold": 75.0,
        "is_anomaly": is_anomaly,
    }


@pytest.fixture
def files(tmp_path):
    scores = tmp_path / "scores.csv"
    write_score_file(
        scores,
        [
            _score_row("u1", "logs", 1, 5.0, 0),
            _score_row("u2", "traces", 2, 15.0, 0),
            _score_row("u3", "traces", 3, 95.0, 1),  # labelled latency, before the split
            _score_row("u4", "logs", 4, 10.0, 0),
            _score_row("u5", "traces", 5, 80.0, 1),  # false positive
            _score_row("u6", "logs", 6, 90.0, 1),  # caught
            _score_row("u7", "traces", 7, 70.0, 0),  # missed
            _score_row("u8", "traces", 8, 20.0, 0),
        ],
    )
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "signal", "kind", "time_unix_nano", "service"])
        w.writerows(
            [
                ["u0", "logs", "error", 0, "checkout"],
                ["u3", "traces", "latency", 3, "checkout"],
                ["u6", "logs", "error", 6, "checkout"],
                ["u7", "traces", "error", 7, "checkout"],
                ["u9", "logs", "error", 9, "checkout"],
            ]
        )
    return scores, labels


def test_evaluate_after_the_split(files):
    r = evaluate(*files, since_ns=4)
    assert (r.n, r.positives, r.unscored_labels) == (5, 2, 1)  # u9 unscored; u0 is before the split
    assert r.auroc == pytest.approx(5 / 6)  # 90 beats 80/20/10, 70 beats 20/10
    assert r.average_precision == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert (r.threshold, r.precision, r.recall, r.f1) == (75.0, 0.5, 0.5, 0.5)  # from is_anomaly only
    assert r.best_f1 == pytest.approx(0.8) and r.best_f1_threshold == 70.0  # score >= 70: P 2/3, R 1
    assert r.recall_by_kind == {"error": (1, 3)}  # u6 caught, u7 missed, u9 not scored
    assert r.by_signal["logs"] == {
        "n": 2,
        "positives": 1,
        "auroc": 1.0,
        "ap": 1.0,
        "precision": 1.0,
        "recall": 1.0,
    }
    traces = r.by_signal["traces"]
    assert (traces["auroc"], traces["precision"], traces["recall"]) == (0.5, 0.0, 0.0)


def test_evaluate_without_split_counts_every_label(files, caplog):
    with caplog.at_level(logging.WARNING, logger="model.evaluate"):
        r = evaluate(*files)
    assert (r.n, r.positives, r.unscored_labels) == (8, 3, 2)
    assert r.recall_by_kind == {"error": (1, 4), "latency": (1, 1)}
    assert "2 labelled record(s) are not in" in caplog.text


def test_loaders_type_values_and_reject_bad_files(files, tmp_path):
    rows = load_scores(files[0])
    assert rows[0] == _score_row("u1", "logs", 1, 5.0, 0)
    assert load_labels(files[1])["u3"] == "latency"
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,signal,score\nx,logs,1\n")
    with pytest.raises(ValueError, match="missing column.*time_unix_nano"):
        load_scores(bad)
    conflict = tmp_path / "conflict.csv"
    conflict.write_text("uid,signal,kind,time_unix_nano,service\na,logs,error,1,s\na,logs,latency,1,s\n")
    with pytest.raises(ValueError, match="labelled both error and latency"):
        load_labels(conflict)


def test_empty_window_is_an_error(files):
    with pytest.raises(ValueError, match="no scored rows"):
        evaluate(*files, since_ns=100)


def test_format_report_shows_baselines_kinds_and_signals(files):
    otad = evaluate(*files, since_ns=4)
    baseline = Report(
        n=5,
        positives=2,
        auroc=0.5,
        average_precision=0.4,
        threshold=99.0,
        precision=math.nan,
        recall=0.0,
        f1=0.0,
        best_f1=0.5,
        best_f1_threshold=1.0,
        recall_by_kind={"error": (0, 3)},
        by_signal={},
        unscored_labels=1,
    )
    text = format_report(otad, {"latency-zscore": baseline})
    header = text.splitlines()[0]
    assert "otad" in header and "latency-zscore" in header
    assert "0.833" in text and "n/a" in text  # otad's AUROC; the baseline's undefined precision
    assert any(line.startswith("error") and "1/3" in line and "0/3" in line for line in text.splitlines())
    assert any(line.startswith("traces") for line in text.splitlines())


def test_plot_pr_writes_a_png(tmp_path):
    y, s = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    precision, recall, _ = pr_curve(y, s)
    out = tmp_path / "pr.png"
    plot_pr(
        {"otad": (precision, recall), "random": (np.array([0.5, 1.0]), np.array([1.0, 0.0]))},
        out,
        operating_point=(0.75, 0.66),
    )
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_report_and_writes_json(files, tmp_path, capsys):
    baseline = tmp_path / "random.csv"
    rows = load_scores(files[0])
    write_score_file(baseline, baseline_score_rows(rows, random_baseline([r["uid"] for r in rows], seed=1)))
    parser = argparse.ArgumentParser()
    evaluate_cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            "--scores",
            str(files[0]),
            "--labels",
            str(files[1]),
            "--since",
            "4",
            "--baseline",
            f"random={baseline}",
            "--json",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "pr.png"),
        ]
    )
    assert evaluate_cmd.run(args) == 0
    assert "random" in capsys.readouterr().out.splitlines()[0]
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["otad"]["recall_by_kind"] == {"error": [1, 3]} and "random" in payload["baselines"]
    assert (tmp_path / "pr.png").stat().st_size > 0
    args.baseline = ["no-equals-sign"]
    assert evaluate_cmd.run(args) == 2
    assert "NAME=scores.csv" in capsys.readouterr().err


# -- baselines and the score file -------------------------------------------------------------------------


def _record(uid, t, duration_ms, service="checkout", signal="traces", value=None, series=None):
    return {
        "uid": uid,
        "time_unix_nano": t,
        "service": service,
        "signal": signal,
        "duration_ms": duration_ms,
        "value": value,
        "series": series,
    }


def test_zscore_ranks_the_latency_outlier_first():
    records = [_record(f"n{i}", i, 10.0 + (i % 4)) for i in range(20)]
    records += [
        _record("slow", 25, 900.0),
        _record("normal", 26, 11.0),
        _record("no-duration", 27, None),
        _record("unseen-service", 28, 5000.0, service="new"),
    ]
    scores = zscore_baseline(records, since_ns=20)
    ranked = sorted(scores, key=scores.get, reverse=True)
    assert ranked[0] == "slow" and scores["slow"] > 10 * scores["normal"]
    assert scores["no-duration"] == 0.0 and scores["unseen-service"] == 0.0


def test_zscore_fits_only_on_pre_split_records():
    before = [_record(f"b{i}", i, 10.0 + i % 3) for i in range(6)]
    after = [
        _record(f"a{i}", 100 + i, 1000.0 + 10 * i) for i in range(30)
    ]  # would dominate a fit on all rows
    scores = zscore_baseline(before + after, since_ns=100)
    assert min(scores[f"a{i}"] for i in range(30)) > 10
    assert max(scores[f"b{i}"] for i in range(6)) < 2
    # without a split, the first half by time is the fit set: here 6 "before" and 12 "after" rows
    assert zscore_baseline(before + after)["b0"] > 1


def test_zscore_scores_metric_values_per_series():
    records = [
        _record(f"{k}{i}", i, None, signal="metrics", value=base + i % 2, series=k)
        for k, base in (("cpu", 0.5), ("mem", 500.0))
        for i in range(10)
    ]
    records += [
        _record("cpu-spike", 20, None, signal="metrics", value=9.0, series="cpu"),
        _record("mem-usual", 21, None, signal="metrics", value=500.5, series="mem"),
    ]
    scores = zscore_baseline(records, since_ns=10)
    assert scores["cpu-spike"] > 5 and scores["mem-usual"] < 2


def test_random_baseline_is_seeded_and_on_the_score_scale():
    uids = [f"u{i}" for i in range(100)]
    a, b = random_baseline(uids, seed=3), random_baseline(uids, seed=3)
    assert a == b and a != random_baseline(uids, seed=4)
    assert all(0.0 <= v < 100.0 for v in a.values())


def test_write_score_file_round_trips_with_four_decimals(tmp_path):
    path = tmp_path / "s.csv"
    rows = [_record("x", 1, 10.0), _record("y", 2, 50.0)]
    n = write_score_file(path, baseline_score_rows(rows, {"x": 0.123456, "y": 2.0}, contamination=0.5))
    lines = path.read_text().splitlines()
    assert n == 2 and lines[0] == "uid,signal,time_unix_nano,service,score,raw_score,threshold,is_anomaly"
    assert lines[1] == "x,traces,1,checkout,50.0000,0.1235,50.0000,1"
    assert load_scores(path)[1]["score"] == 100.0 and load_scores(path)[1]["is_anomaly"] == 1


def test_auroc_equals_pairwise_count_with_ties():
    rng = np.random.default_rng(11)
    y = (rng.random(200) < 0.3).astype(int)
    s = rng.integers(0, 10, 200).astype(float)  # heavy ties
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    assert auroc(y, s) == pytest.approx(
        ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    )
