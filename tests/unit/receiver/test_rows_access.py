"""Access-log lines sent as plain text: the request, status and client they name become the row's columns."""

from __future__ import annotations

import pytest

from model.schema import HTTP_ACTIVITY
from receiver.rows.access import access_line
from receiver.rows.mapper import RowMapper
from tests.unit.receiver.rows_helpers import logs_request


def one_row(**record):
    batch = RowMapper().map_logs(logs_request(record), received_unix_nano=42)
    assert not batch.rejections and len(batch.rows) == 1
    return batch.rows[0]


COMBINED = (
    '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
    '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"'
)


def test_the_combined_log_format() -> None:
    assert access_line(COMBINED) == {
        "http.request.method": "GET",
        "url.path": "/apache_pb.gif",
        "http.response.status_code": 200,
        "client.address": "127.0.0.1",
        "http.response.body.size": 2326,
        "user.name": "frank",
        "user_agent.original": "Mozilla/4.08 [en] (Win98; I ;Nav)",
    }


@pytest.mark.parametrize(
    ("line", "method", "status"),
    [
        ('10.0.0.7 - - [07/Dec/2026:10:00:00 +0000] "POST /api/cart HTTP/1.1" 503 -', "POST", 503),  # common
        (
            '2001:db8::1 - - "DELETE /items/9 HTTP/2.0" 404 12 8.5ms',
            "DELETE",
            404,
        ),  # no time, a duration after
    ],
)
def test_common_variants(line: str, method: str, status: int) -> None:
    got = access_line(line)
    assert (
        got is not None
        and got["http.request.method"] == method
        and got["http.response.status_code"] == status
    )


@pytest.mark.parametrize(
    "line",
    [
        "GET /api/items returned 200 results",  # a message about a request, not an access line
        'user alice said "GET /x HTTP/1.1" 200 5',  # not at the start
        '10.0.0.7 - - "FETCH /x HTTP/1.1" 200 5',  # not an HTTP method
        '10.0.0.7 - - "GET /x HTTP/1.1" 999 5',  # not a status
    ],
)
def test_other_lines_are_not_access_lines(line: str) -> None:
    assert access_line(line) is None


def test_an_access_line_without_attributes_maps_like_an_instrumented_one() -> None:
    row = one_row(body='10.1.2.3 - ben "GET /cart/12 HTTP/1.1" 503 35410 10.9ms')
    assert row.class_uid == HTTP_ACTIVITY and row.status_id == 2  # a 5xx is a failure
    assert row.fields["http_response.code"] == 503 and row.fields["http_request.url.path"] == "/cart/12"
    assert row.fields["actor.user.name"] == "ben" and row.fields["src_endpoint.ip"] == "10.1.2.3"


def test_attributes_sent_with_the_line_win() -> None:
    row = one_row(body='10.1.2.3 - - "GET /cart HTTP/1.1" 200 5', attrs={"http.response.status_code": 500})
    assert row.fields["http_response.code"] == 500
