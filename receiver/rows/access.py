"""An access-log line sent as plain text: the request, status and client it names, as the attributes an
instrumented server would have set.

The Common and Combined Log Formats (Apache's and nginx's defaults, and what most proxies write) put them in
fixed places: `client - user [time] "METHOD path PROTOCOL" status bytes ["referer" "user agent"]` (the `-` is
the identd field, which servers leave empty). A
filelog receiver without a parser forwards such a line as it is; read as text, its status is a number the
template miner masks, so a 503 looked like a 200.
"""

from __future__ import annotations

import re

_METHODS = "GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS|CONNECT|TRACE"
_LINE = re.compile(
    r"(?P<client>[^\s\"]+) - (?P<user>\S+) (?:\[[^\]]{1,64}\] )?"
    rf'"(?P<method>{_METHODS}) (?P<path>\S{{1,2048}})(?: HTTP/[\d.]{{1,3}})?" '
    r"(?P<status>[1-5]\d\d) (?P<bytes>\d+|-)"
    r'(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)


def access_line(text: str) -> dict[str, object] | None:
    """The semantic-convention attributes of an access-log line (method, path, status, response size, client
    address, user, user agent), or None when the line does not start like one."""
    m = _LINE.match(text)
    if m is None:
        return None
    out: dict[str, object] = {
        "http.request.method": m["method"],
        "url.path": m["path"],
        "http.response.status_code": int(m["status"]),
        "client.address": m["client"],
    }
    if m["bytes"] != "-":
        out["http.response.body.size"] = int(m["bytes"])
    if m["user"] != "-":
        out["user.name"] = m["user"]
    if m["agent"] and m["agent"] != "-":
        out["user_agent.original"] = m["agent"]
    return out
