"""How many anomaly events reach the backend, per hour and per injected episode, with and without the finding
aggregation (receiver/aggregate.py), on the simulator through a real `otad serve` (in-process) and an OTLP sink.

    python benchmarks/event_volume.py [--minutes 60] [--seed 2] [--rate 6] [--anomaly-rate 0.1]
                                      [--window-s 300] [--max-per-window 3] [--max-per-minute 60]

One run gives both figures: every anomaly is stored and, before the aggregation, every anomaly was one event
(so "before" = anomalies, counted as they reach the aggregator); "after" = the events the sink received.
Episodes are the simulator's labelled records grouped by kind and time (a gap over 120 s starts a new one). An
episode is *detected* when an anomaly's source record is one of its labelled records, *reported* when an event
of a finding holding such an anomaly reached the sink; "lost" = detected and not reported (target: none), and
events per episode = the events of the findings holding its anomalies (target: <= 10).
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from receiver.aggregate import EventLimits, FindingAggregator, pattern_key  # noqa: E402
from receiver.service import Service  # noqa: E402
from receiver.settings import Settings  # noqa: E402
from tests.otlp_sink import OtlpSink  # noqa: E402

EPISODE_GAP_NS = 120 * 10**9
START = "2026-11-02T00:00:00Z"
START_NS = 1_793_577_600 * 10**9  # START


def episodes(labels_path: Path) -> tuple[dict[str, int], list[dict]]:
    """uid -> episode index, and the episodes (kind, start, end, labelled records)."""
    with open(labels_path) as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: int(r["time_unix_nano"]))
    of: dict[str, int] = {}
    eps: list[dict] = []
    for r in rows:
        t = int(r["time_unix_nano"])
        last = eps[-1] if eps else None
        if last is None or last["kind"] != r["kind"] or t - last["end"] > EPISODE_GAP_NS:
            eps.append({"kind": r["kind"], "start": t, "end": t, "labelled": 0})
        eps[-1]["end"] = t
        eps[-1]["labelled"] += 1
        of[r["uid"]] = len(eps) - 1
    return of, eps


def simulate(port: int, labels: Path, a: argparse.Namespace) -> None:
    from sim import simulate as sim

    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    args = parser.parse_args(
        [
            *("--target", f"localhost:{port}", "--labels", str(labels)),
            *("--duration", str(int(a.minutes * 60)), "--rate", str(a.rate), "--speedup", "0"),
            *("--seed", str(a.seed), "--anomaly-rate", str(a.anomaly_rate), "--start", START),
        ]
    )
    assert sim.run(args) == 0


def run(a: argparse.Namespace) -> dict:
    """long: one service run, then the tallies."""
    work = Path(tempfile.mkdtemp(prefix="otad-events-"))
    found: list[tuple[str, str]] = []  # (source uid, finding uid) of every anomaly, as the aggregator saw it
    keys: dict[str, tuple] = {}  # finding uid -> its pattern
    with OtlpSink() as sink:
        settings = Settings(
            data_dir=work / "data",
            grpc_endpoint="localhost:0",
            http_endpoint="localhost:0",
            metrics_endpoint="localhost:0",
            export_endpoint=sink.endpoint,
            bootstrap_rows=a.bootstrap,
            event_window_s=a.window_s,
            event_max_per_window=a.max_per_window,
            event_max_per_minute=a.max_per_minute,
            event_wait_s=a.wait_s,
        )
        service = Service(settings)
        aggregator = service.emitter.aggregator
        assert aggregator is not None
        add = aggregator.add

        advance = aggregator.advance
        ops: list[tuple[str, object]] = []  # every call, for --replay with other limits

        def recording_add(anomalies):
            ops.append(("add", list(anomalies)))
            stored, send = add(anomalies)
            found.extend((e.anomaly.row.uid, e.finding_uid) for e in stored)
            keys.update({e.finding_uid: pattern_key(e.anomaly) for e in stored})
            return stored, send

        def recording_advance(time_ms):
            ops.append(("advance", time_ms))
            return advance(time_ms)

        aggregator.add = recording_add  # type: ignore[method-assign]
        aggregator.advance = recording_advance  # type: ignore[method-assign]
        service.start()
        t0 = time.monotonic()
        try:
            simulate(service.grpc_port, work / "labels.csv", a)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and (
                service.pipeline.state != "scoring" or not service.pipeline.wait_idle(1)
            ):
                time.sleep(0.5)
            service.emitter.close_findings()
            assert service.emitter.flush(60)
            cut = int(service.pipeline.scorer.mv.meta["train_end_unix_nano"])  # type: ignore[union-attr]
        finally:
            service.stop(10)
            shutil.rmtree(work / "data", ignore_errors=True)  # the store; ops.pkl is what --replay needs
        wall = time.monotonic() - t0
        events = []
        for _, _, rec in sink.log_records():
            body = json.loads(rec.body.string_value)
            events.append((body["finding_info"]["uid"], body["activity_id"], rec.time_unix_nano))
    with open(work / "ops.pkl", "wb") as handle:
        pickle.dump({"ops": ops, "cut": cut, "minutes": a.minutes, "seed": a.seed}, handle)
    out = tally(work, found, events, keys, cut, a)
    out["wall_seconds"] = round(wall, 1)
    return out


def replay(a: argparse.Namespace) -> dict:
    """The aggregation of a recorded run (--replay WORK) again, with other limits; no service, same anomalies."""
    work = Path(a.replay)
    with open(work / "ops.pkl", "rb") as handle:
        rec = pickle.load(handle)  # noqa: S301 (our own file)
    a.minutes, a.seed = rec["minutes"], rec["seed"]
    agg = FindingAggregator(EventLimits(a.window_s, a.max_per_window, a.max_per_minute, a.wait_s), "replay")
    found: list[tuple[str, str]] = []
    keys: dict[str, tuple] = {}
    sent = []
    for op, arg in rec["ops"]:
        if op == "add":
            stored, send = agg.add(arg)
            found.extend((e.anomaly.row.uid, e.finding_uid) for e in stored)
            keys.update({e.finding_uid: pattern_key(e.anomaly) for e in stored})
            sent += send
        else:
            sent += agg.advance(arg)
    sent += agg.flush()
    events = [(e.finding_uid, e.finding["activity_id"], e.anomaly.row.time_unix_nano) for e in sent]
    return tally(work, found, events, keys, rec["cut"], a)


def tally(work: Path, found: list, events: list, keys: dict, cut: int, a: argparse.Namespace) -> dict:
    """long: the figures of one run: per hour, per episode."""
    of, eps = episodes(work / "labels.csv")
    ep_findings: dict[int, set[str]] = defaultdict(set)
    ep_anomalies: dict[int, int] = defaultdict(int)
    for source, finding in found:
        if source in of:
            ep_findings[of[source]].add(finding)
            ep_anomalies[of[source]] += 1
    events_of: dict[str, int] = defaultdict(int)
    for finding, _, _ in events:
        events_of[finding] += 1
    scored_eps = [i for i, e in enumerate(eps) if e["end"] > cut]
    per_episode = []
    for i in scored_eps:
        n_events = sum(events_of[f] for f in ep_findings[i])
        per_episode.append(
            {
                "kind": eps[i]["kind"],
                "labelled": eps[i]["labelled"],
                "anomalies_before": ep_anomalies[i],  # one event each before the aggregation
                "events_after": n_events,
                "findings": len(ep_findings[i]),
                "patterns": sorted({keys[f] for f in ep_findings[i]}) if a.patterns else None,
            }
        )
    hours = (START_NS + int(a.minutes * 60e9) - cut) / 3.6e12  # simulated hours scored (after the cold start)
    detected = [p for p in per_episode if p["anomalies_before"]]
    return {
        "minutes": a.minutes,
        "seed": a.seed,
        "limits": {
            "window_s": a.window_s,
            "max_per_window": a.max_per_window,
            "max_per_minute": a.max_per_minute,
            "wait_s": a.wait_s,
        },
        "anomalies": len(found),
        "events": len(events),
        "creates": sum(1 for _, act, _ in events if act == 1),
        "updates": sum(1 for _, act, _ in events if act == 2),
        "scored_hours": round(hours, 3),
        "anomalies_per_hour": round(len(found) / hours, 1),
        "events_per_hour": round(len(events) / hours, 1),
        "episodes_after_cut": len(scored_eps),
        "episodes_detected": len(detected),
        "episodes_lost": sum(1 for p in detected if not p["events_after"]),
        "max_events_per_episode": max((p["events_after"] for p in detected), default=0),
        "max_anomalies_per_episode": max((p["anomalies_before"] for p in detected), default=0),
        "per_episode": per_episode,
        "work": str(work),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--anomaly-rate", type=float, default=0.1)
    ap.add_argument("--bootstrap", type=int, default=5000)
    ap.add_argument("--window-s", type=float, default=300.0)
    ap.add_argument("--max-per-window", type=int, default=1)
    ap.add_argument("--wait-s", type=float, default=60.0)
    ap.add_argument("--max-per-minute", type=int, default=60)
    ap.add_argument("--patterns", action="store_true", help="list each episode's patterns")
    ap.add_argument("--replay", default=None, help="a previous run's work dir: aggregate its anomalies again")
    a = ap.parse_args(argv)
    print(json.dumps(replay(a) if a.replay else run(a), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
