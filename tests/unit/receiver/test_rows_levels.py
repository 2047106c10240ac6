"""Plain-text log lines: the level their header writes becomes the record's severity when it carries none, and
a logfmt line is read as the key-value object it is."""

from __future__ import annotations

import pytest

from model.extract import derive
from model.schema import APPLICATION_ERROR, APPLICATION_LOG
from receiver.rows.levels import level_in_text
from receiver.rows.logs import logfmt
from receiver.rows.mapper import RowMapper
from tests.unit.receiver.rows_helpers import logs_request


def one_row(**record):
    batch = RowMapper().map_logs(logs_request(record), received_unix_nano=42)
    assert not batch.rejections and len(batch.rows) == 1
    return batch.rows[0]


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("2024-01-01 10:00:00,123 ERROR [main] c.e.Foo - connection refused", "ERROR"),  # log4j / logback
        ("17/06/09 20:10:40 INFO executor.Backend: registered", "INFO"),
        ("081109 203615 148 WARN dfs.DataNode: slow block", "WARN"),
        ("ERROR:root:division by zero", "ERROR"),  # Python's default format
        ("2024/01/01 10:00:00 [error] 123#0: *1 open() failed", "ERROR"),  # nginx
        ("E0612 10:00:00.000000    1 main.go:12] boom", "ERROR"),  # glog / klog
        ("W0612 10:00:00.000000    1 main.go:12] slow", "WARN"),
        ("<11>Jan  1 10:00:00 host app: disk failed", "ERR"),  # syslog PRI 11 = user.err
        ("<14>Jan  1 10:00:00 host app: started", "INFO"),
        ("ts=2024-01-01T10:00:00Z level=warn msg=retrying", "WARN"),  # logfmt
        ('{"level": "error", "msg": "x"', "ERROR"),  # cut JSON, not parsed as an object
        ("2024-01-01T10:00:00Z\terror\tmain.go:12\tfailed", "ERROR"),  # zap console
        (
            "- 1700000000 2023.11.14 n07 2023-11-14-22.13.20 n07 NODE SCHED FATAL worker lost its lease",
            "FATAL",
        ),
        ("Error: cannot open /etc/app.conf", "ERROR"),
        ("panic: runtime error: index out of range", "PANIC"),
        ("12:00:01 Warning something odd", "WARNING"),
        # No level: words of the message are not its level.
        ("0 errors found", ""),
        ("connection error while reading", ""),
        ("Alert rule fired for disk usage", ""),
        ("Critical section entered", ""),
        ("USER ALERT SENT", ""),
        ("GET /api/items ERROR", ""),
        ("Info about the cart", ""),
        ("- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228 crond[2915]: session closed", ""),
        ("ts=1 level=loud msg=x", ""),
        ("<999>not a priority", ""),
        ("", ""),
    ],
)
def test_level_in_text(line: str, level: str) -> None:
    assert level_in_text(line) == level


def test_an_unparsed_error_line_is_an_application_error() -> None:
    row = one_row(body="2024-01-01 10:00:00,123 ERROR [main] db down")
    assert (row.class_uid, row.severity_id, row.status_id) == (APPLICATION_ERROR, 4, 2)
    assert row.fields["severity_text"] == "ERROR"


def test_an_unparsed_info_line_is_informational() -> None:
    row = one_row(body="2024-01-01 10:00:00,123 INFO [main] cart has 3 items")
    assert (row.class_uid, row.severity_id) == (APPLICATION_LOG, 1)


def test_the_record_severity_wins_over_the_line() -> None:
    row = one_row(body="2024-01-01 10:00:00 ERROR db down", severity_number=9)
    assert row.severity_id == 1 and "severity_text" not in row.fields
    row = one_row(body="2024-01-01 10:00:00 ERROR db down", severity_text="WARN")
    assert row.severity_id == 3 and row.fields["severity_text"] == "WARN"


def test_a_line_without_a_level_keeps_severity_unknown() -> None:
    row = one_row(body="0 errors found in 12 files")
    assert row.severity_id == 0 and "severity_text" not in row.fields


def test_a_logfmt_line_is_read_like_a_json_body() -> None:
    line = 'time=2024-01-01T10:00:00Z level=warn msg="slow read of item 42" status=200 duration_ms=812.5'
    row = one_row(body=line)
    assert row.fields["message"] == "slow read of item 42"
    assert row.severity_id == 3 and row.fields["severity_text"] == "warn"
    assert row.fields["unmapped.status"] == 200 and row.fields["unmapped.duration_ms"] == 812.5
    assert derive(row, None)["latency_ms"] == 812.5  # a duration attribute, as when sent as attributes


@pytest.mark.parametrize(
    "line",
    [
        "user alice set retries=3",  # words between pairs: a message, not logfmt
        "retries=3",  # one pair
        'a=1 b="unterminated',
    ],
)
def test_a_message_that_mentions_a_pair_stays_text(line: str) -> None:
    row = one_row(body=line)
    assert row.fields["message"] == line and not any(k.startswith("unmapped.") for k in row.fields)


def test_logfmt_values_are_unquoted_and_numbers_are_numbers() -> None:
    assert logfmt('level=info msg="a \\"quoted\\" word" n=-3 x=1.5e3 path=/a/b') == {
        "level": "info",
        "msg": 'a "quoted" word',
        "n": -3,
        "x": 1500.0,
        "path": "/a/b",
    }


@pytest.mark.parametrize(
    ("text", "severity_id"),
    [
        ("E", 4),  # Android logcat, glog: a one-letter level as the record's own severity text
        ("W", 3),
        ("I", 1),
        ("WRN", 3),  # Serilog's short forms
        ("FTL", 6),
        ("Information", 1),  # .NET
        ("FINE", 1),  # java.util.logging
        ("SEVERE", 4),
        ("X", 0),
    ],
)
def test_severity_text_in_other_loggers_words(text: str, severity_id: int) -> None:
    assert one_row(body="x", severity_text=text).severity_id == severity_id


def test_a_one_letter_word_in_a_line_is_no_level_but_a_serilog_header_is() -> None:
    assert level_in_text("2024-01-01 10:00:00 I think the cache is cold") == ""
    assert level_in_text("[10:00:00 WRN] Retrying the request") == "WRN"
    assert one_row(body="[10:00:00 WRN] Retrying the request").severity_id == 3
