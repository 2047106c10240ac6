"""The report's precision/recall point is otad's own alerts: each row's own threshold, an episode's muted points
excluded — not every row whose score passes the nominal threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.schema import METRIC_OBSERVATION, Row
from receiver import report


def test_the_pr_point_counts_the_rows_otad_alerted_on(tmp_path: Path) -> None:
    rows = [Row(f"u{i}", "metrics", 1_000 + i, "svc", METRIC_OBSERVATION, 0, 1, 0, {}) for i in range(6)]
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "uid,signal,kind,time_unix_nano,service\nu0,metrics,outage,1000,svc\nu1,metrics,outage,1001,svc\n"
    )
    data = report.ReportData("test", "v1", len(rows))
    data.threshold = 50.0
    # u0 alerted; u1 is the same outage's next point (muted: high score, no alert); u2 is ordinary
    data.scores["combined"] = np.array([100.0, 90.0, 5.0, 5.0, 5.0, 60.0])
    flagged = np.array(
        [True, False, False, False, False, False]
    )  # u5 is above 50 but under its own threshold
    report._add_pr(data, rows, labels, 0, flagged)
    assert data.pr is not None
    assert data.pr["point"] == (0.5, 1.0)  # recall 1 of 2, precision 1 of 1 (by score >= 50: 2/2 and 2/3)
