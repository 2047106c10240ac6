"""The level a plain-text log line writes in its own header, for records that carry no severity.

A Collector's filelog receiver without a severity parser sends every line with severity number 0 and no text,
so an ERROR line would look like any other. The level is read only where log formats put it, never from the
message's words ("0 errors found" is not an error):
- `level=error` (logfmt; also `lvl`, `severity`, `loglevel`), anywhere in the line's start;
- a syslog priority `<PRI>` opening the line (severity = PRI mod 8);
- a glog/klog header, `E0612 10:00:00.000000 ...` (I, W, E, F);
- a level word among the first header tokens: an upper-case word (`ERROR`, `[WARN]`, `ERROR:root:...`) after
  tokens that are timestamps, numbers, bracketed or upper-case, one of the first kind among them
  (`<date> NODE7 SCHED FATAL ...`, not "USER ALERT SENT"); a lower-case or
  capitalised one after timestamps, numbers or bracketed tokens only, and as the line's first token only when
  marked as a level (`[error]`, `Error:`; "Alert rule fired" is no level).
"""

from __future__ import annotations

import re

from receiver.rows.common import SEVERITY_TEXT_NUMBER

HEADER_TOKENS = 10  # how many leading tokens may hold the level
_HEAD_CHARS = 256
_KV = re.compile(r"(?:^|[\s,{])\"?(?:level|lvl|severity|loglevel|log_level)\"?\s*[=:]\s*\"?([A-Za-z]+)", re.I)
_PRI = re.compile(r"<(\d{1,3})>")
_GLOG = re.compile(r"([IWEF])\d{4}$")
_SYSLOG = ("EMERG", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG")  # RFC 5424 severities 0-7
_GLOG_LEVEL = {"I": "INFO", "W": "WARN", "E": "ERROR", "F": "FATAL"}
_PUNCT = "[]()<>{}|:;,\"'"


def level_in_text(text: str) -> str:
    """The level the line's header names, upper-case as SEVERITY_TEXT_NUMBER spells it, or ""."""
    head = text[:_HEAD_CHARS]
    m = _KV.search(head)
    if m and m.group(1).upper() in SEVERITY_TEXT_NUMBER:
        return m.group(1).upper()
    head = head.lstrip()
    m = _PRI.match(head)
    if m and int(m.group(1)) <= 191:
        return _SYSLOG[int(m.group(1)) % 8]
    tokens = head.split(None, HEADER_TOKENS)[:HEADER_TOKENS]
    if len(tokens) >= 2 and _GLOG.match(tokens[0]) and any(c.isdigit() for c in tokens[1]):
        return _GLOG_LEVEL[tokens[0][0]]
    header = True  # only dates, numbers and bracketed tokens so far
    upper = True  # ... or upper-case words
    stamped = False  # a date, number or bracketed token came before
    for n, token in enumerate(tokens):
        bracketed = token[:1] in "[(<" and token[-1:] in "])>"
        bare = token.strip(_PUNCT)
        word = bare.split(":", 1)[0]
        if word.isalpha() and word.upper() in SEVERITY_TEXT_NUMBER:
            marked = bracketed or token.lstrip("[(<").startswith(word + ":")
            first = n == 0
            if (word.isupper() and upper and (first or stamped)) or (header and (marked or not first)):
                return word.upper()
        if bracketed or any(c.isdigit() for c in token) or not token.strip(_PUNCT + "-./"):
            stamped = True
        else:
            header = False
            upper = upper and bare.isupper()
            if not upper:
                return ""
    return ""
