"""Detectors: the member API (`base`), the members, and the ensemble that combines them.

`REGISTRY` maps a member's name (as `OTAD_DETECTORS` spells it) to its module and class, imported on use.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from model.detectors.agreement import AgreementWeights
from model.detectors.base import Detector, Frame
from model.detectors.ensemble import Ensemble
from model.detectors.kinds import NewKinds
from model.detectors.recent import RecentCalibration, RecentCenter

REGISTRY = {
    "knn": ("model.detectors.knn", "KnnMember"),
    "pattern": ("model.detectors.pattern", "PatternFrequency"),
    "isolation": ("model.detectors.isolation", "IsolationMember"),
    "latency": ("model.detectors.latency", "LatencyDetector"),
    "errors": ("model.detectors.operation", "ErrorRateDetector"),
    "series": ("model.detectors.series", "SeriesDetector"),
}
DEFAULT_MEMBERS = ("knn", "pattern", "isolation", "latency", "errors", "series")


def member_class(name: str) -> type[Detector]:
    try:
        module, cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}: one of {', '.join(REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


def new_member(name: str, **kwargs: Any) -> Detector:
    """A fresh member, its constructor given `kwargs` (build: k and max_rows for knn, alert_p and max_series
    for series)."""
    return member_class(name)(**kwargs)


def build(
    names: tuple[str, ...] | list[str] = DEFAULT_MEMBERS,
    *,
    combiner: str = "minp",
    false_alerts_per_hour: float = 10.0,
    alert_pvalue: float = 1e-3,
    k: int = 10,
    max_rows: int = 100_000,
    series_max: int = 10_000,
    weighting: str = "agreement",
) -> Ensemble:
    """An unfitted ensemble of the named members."""
    # the series member opens an episode, and keeps muted points above, at the ensemble's alert level
    args: dict[str, dict[str, Any]] = {
        "knn": {"k": k, "max_rows": max_rows},
        "series": {"alert_p": alert_pvalue, "max_series": series_max},
    }
    members = [new_member(n, **args.get(n, {})) for n in names]
    return Ensemble(members, combiner, false_alerts_per_hour, alert_pvalue, weighting)


def ensemble_from_state(values: dict[str, Any], arrays: dict[str, np.ndarray]) -> Ensemble:
    """The ensemble `Ensemble.state()` saved, members and online state included."""
    members = []
    for j, spec in enumerate(values["members"]):
        mine = {k: arrays[f"m{j}.{k}"] for k in spec["arrays"]}
        members.append(member_class(spec["name"]).from_state(spec["values"], mine))
    # a model saved before member weighting gets it too: the weights are measured online, nothing is fitted
    weighting = values.get("weighting", "agreement")
    ens = Ensemble(
        members, values["combiner"], values["false_alerts_per_hour"], values["alert_pvalue"], weighting
    )
    ens.entities = {k: list(v) for k, v in values["entities"].items()}
    ens.kinds = NewKinds.from_state(values.get("kinds", {}))
    ens.share_templates()
    ens.recent = {
        key: RecentCalibration.from_state(v, arrays, f"r{key}.")
        for key, v in values.get("recent", {}).items()
    }
    ens.center = {key: RecentCenter(arrays[f"c{key}.z"]) for key in values.get("center", [])}
    ens.agree = {
        signal: AgreementWeights.from_state(v, arrays, f"a{signal}.")
        for signal, v in values.get("agree", {}).items()
    }
    return ens


__all__ = ["DEFAULT_MEMBERS", "REGISTRY", "Detector", "Ensemble", "Frame", "build", "ensemble_from_state"]
