"""The benchmark's one markdown table (every dataset, signal and detector) and its JSON document."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

HEADER = (
    "dataset",
    "signal",
    "detector",
    "rows",
    "labelled",
    "AUROC",
    "AP",
    "P",
    "R",
    "F1",
    "kinds flagged",
    "NAB std / low-FP / low-FN",
    "notes",
)
BEATS = "⚠ beats otad"


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _nab(n: dict[str, Any] | None) -> str:
    if not n:
        return ""
    return " / ".join(_f(n.get(p), 1) for p in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"))


def _nab_note(n: dict[str, Any] | None) -> str:
    if not n:
        return ""
    return f"windows {n.get('windows_detected')}/{n.get('windows')}, fp/1000 {_f(n.get('fp_per_1000'), 2)}"


def _per_hour(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _kinds(s: dict[str, Any]) -> str:
    return f"{s['kinds_flagged']}/{s['kinds_present']}" if "kinds_present" in s else ""


def offline_rows(name: str, off: dict[str, Any]) -> list[list[str]]:
    rows = []
    signals = off["signals"]
    keys = ["all"] if len(signals) == 2 else list(signals)  # one signal: its row would repeat "all"
    for sig in keys:
        o = signals[sig]["otad"]
        nab = off.get("nab", {}) if sig == "all" else {}
        note = f"flag rate among normal {_f((o.get('fpr_normal') or 0) * 100, 2)} %"
        if nab.get("otad"):
            note += "; " + _nab_note(nab["otad"])
        rows.append(
            [
                name,
                sig,
                "otad",
                str(o["rows"]),
                str(o["labelled"]),
                _f(o["auroc"]),
                _f(o["ap"]),
                _f(o.get("precision")),
                _f(o.get("recall")),
                _f(o.get("f1")),
                _kinds(o),
                _nab(nab.get("otad")),
                note,
            ]
        )
        for b, s in signals[sig]["baselines"].items():
            if s["auroc"] is None:
                continue  # the baseline has nothing to say about these rows (a constant score)
            beats = [m for m in ("auroc", "ap") if o[m] is not None and s[m] > o[m]]
            note = f"{BEATS} in {'/'.join(m.upper() for m in beats)}" if beats else ""
            nab_b = nab.get(b) if b == "rolling_z" else None
            if nab_b:
                note = "; ".join(x for x in (note, "|z| > 4; " + _nab_note(nab_b)) if x)
            rows.append(
                [name, sig, b, str(s["rows"]), str(s["labelled"]), _f(s["auroc"]), _f(s["ap"])]
                + ["", "", "", ""]
                + [_nab(nab_b), note]
            )
    whole = off.get("nab", {}).get("otad_whole_stream")
    if whole:
        rows.append(
            [name, "all", "otad, whole stream"]
            + [""] * 8
            + [_nab(whole), "NAB's protocol: the first half as judged while fitting; " + _nab_note(whole)]
        )
    if off.get("nab_anchor"):
        a = off["nab_anchor"]
        rows.append(
            [name, "all", "rolling_z, whole stream (nab_score.py anchor)"]
            + [""] * 8
            + [_nab(a), "NAB's protocol, no split; " + _nab_note(a)]
        )
    return rows


def service_row(name: str, sv: dict[str, Any]) -> list[str]:
    if "error" in sv:
        return [name, "all", "otad serve"] + [""] * 9 + [f"failed: {sv['error'][:200]}"]
    p, r = sv.get("precision"), sv.get("recall")
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r else None
    cs, rp = sv.get("cold_start", {}), sv.get("replay", {})
    notes = [
        f"{sv['flagged_sources']} events, {_per_hour(sv.get('events_per_hour_of_data'))}/h of data",
        f"cold start {cs.get('model_version')} on {cs.get('train_rows')} rows, trained {cs.get('train_seconds')}s, "
        f"scoring {cs.get('seconds_to_scoring')}s into the replay",
    ]
    if rp.get("lost_records") or rp.get("partial_rejected"):
        notes.append(f"lost {rp.get('lost_records')} / rejected {rp.get('partial_rejected')} records")
    if sv.get("wait", {}).get("train_error"):
        notes.append(f"FIRST MODEL NEVER TRAINED: {sv['wait']['train_error'][:120]}")
    elif sv.get("wait", {}).get("stalled"):
        notes.append("STALLED before every row was processed")
    if sv.get("nab"):
        notes.append(_nab_note(sv["nab"]))
    kinds = f"{sv['kinds_flagged']}/{sv['kinds_present']}" if "kinds_present" in sv else ""
    return [
        name,
        "all",
        "otad serve",
        str(sv.get("scored_rows")),
        str(sv.get("labelled_after_cut")),
        "",
        "",
        _f(p),
        _f(r),
        _f(f1),
        kinds,
        _nab(sv.get("nab")),
        "; ".join(notes),
    ]


def markdown(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name, d in results["datasets"].items():
        rows: list[list[str]] = []
        if "offline" in d:
            rows += (
                offline_rows(name, d["offline"])
                if "error" not in d["offline"]
                else [[name, "all", "otad"] + [""] * 9 + [f"failed: {d['offline']['error'][:200]}"]]
            )
        if "service" in d:
            rows.append(service_row(name, d["service"]))
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    cpu = ""
    try:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), ""
        )
    except OSError:
        cpu = platform.processor()
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "untracked_files": bool(git("status", "--porcelain")),
        "nproc": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
