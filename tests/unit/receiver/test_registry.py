"""The saved model versions as the life cycle lists them: states, the default rollback target, removal."""

from __future__ import annotations

import json

import pytest

from model.version import promote_version
from receiver.registry import Registry


def _save(models, version: str, trained_at: float) -> None:
    (models / version).mkdir(parents=True)
    meta = {
        "trained_at": trained_at,
        "rows": 100,
        "history": [{"epoch": 1, "train_loss": 0.5}],
        "best_epoch": 1,
    }
    (models / version / "model.json").write_text(json.dumps({"meta": meta}))


def test_states_rollback_target_and_removal(tmp_path):
    models = tmp_path / "models"
    for i, v in enumerate(("v1", "v2", "v3", "v4")):
        _save(models, v, 1000.0 + i)
    reg = Registry(models)
    promote_version(models, "v1")
    reg.event("promoted", "v2", "by hand", previous="v1")
    promote_version(models, "v2")
    reg.event("promoted", "v3", "rules", previous="v2")
    promote_version(models, "v3")
    reg.verdict("v3", {"promote": True, "rows": 400.0})
    described = {m["version"]: m for m in reg.describe(reg.current(), "v4")}
    assert [m for m in described] == ["v1", "v2", "v3", "v4"]  # oldest training first
    assert {v: m["state"] for v, m in described.items()} == {
        "v1": "retired",
        "v2": "retired",
        "v3": "current",
        "v4": "challenger",
    }
    assert described["v3"]["quality"]["shadow"] == {"promote": True, "rows": 400.0}
    assert described["v1"]["quality"]["last_epoch"] == {"epoch": 1, "train_loss": 0.5}
    assert reg.previous({"v3"}) == "v2"  # the most recently retired
    reg.event("rolled back", "v2", "rollback", previous="v3")
    assert reg.previous({"v2"}) == "v3"
    reg.remove("v1")
    assert "v1" not in reg.versions() and not (models / "v1").exists()
    assert reg.describe("v2", None)[-1]["state"] == "kept"  # v4: saved, never current
    with pytest.raises(LookupError):
        reg.meta("v1")
    with pytest.raises(LookupError):
        reg.meta("../x")
