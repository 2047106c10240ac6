"""The pipeline's scorer for a model version: a scoring child process (OTAD_SCORE_PROCESS) or in-process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from model.schema import Row
from model.scorer import ScoredBatch, Scorer
from model.version import ModelVersion
from model.worker import ScoringProcess, ScoringProcessError
from receiver.settings import Settings

logger = logging.getLogger(__name__)

AnyScorer = Scorer | ScoringProcess


class PipelineHooks(Protocol):
    """What the pipeline's worker thread calls, for the model life cycle (receiver/lifecycle.py)."""

    def pending(self) -> bool:
        """A version waits to take over (an idle pipeline then wakes to switch)."""
        ...

    def between_batches(self) -> None:
        """No batch is in hand: switch versions here (`Pipeline.activate`)."""
        ...

    def scored(self, rows: list[Row], scored: ScoredBatch) -> None:
        """A batch the current version scored (before it is stored)."""
        ...


def new_scorer(s: Settings, mv: ModelVersion) -> Scorer | ScoringProcess:
    """A scoring child for a saved model version (OTAD_SCORE_PROCESS), else an in-process Scorer."""
    path = Path(s.models_dir) / mv.version
    if s.score_process and (path / "model.json").exists():
        try:
            return ScoringProcess(
                mv,
                path,
                k=s.knn_k,
                alert_pvalue=s.alert_pvalue,
                max_rows=s.reference_max_rows,
                threads=s.torch_threads,
                nice=s.background_nice,
                false_alerts_per_hour=s.false_alerts_per_hour,
                state_save_s=s.state_save_s,
                series_max=s.series_max,
            )
        except ScoringProcessError as exc:
            logger.error("%s; scoring in the service process instead", exc)
    elif s.score_process:
        logger.warning(
            "model %s is not saved under %s; scoring in the service process", mv.version, path.parent
        )
    scorer = Scorer(mv, threads=s.torch_threads)
    scorer.restore(path)
    return scorer


def close_scorer(scorer: Scorer | ScoringProcess | None) -> None:
    if isinstance(scorer, ScoringProcess):
        scorer.close()
