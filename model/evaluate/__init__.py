"""Evaluate: detection quality of a score file against labels (AUROC, AP, PR curve, baselines).

`metrics` computes the numbers, `scorefile` reads and writes the CSV files, `reports` joins and formats them,
and `baselines` scores the same rows with simple methods to compare against.
"""

from model.evaluate.baselines import baseline_score_rows, random_baseline, zscore_baseline
from model.evaluate.metrics import auroc, average_precision, pr_curve
from model.evaluate.reports import Joined, Report, evaluate, format_report, join, plot_pr, report
from model.evaluate.scorefile import LABEL_COLUMNS, SCORE_COLUMNS, load_labels, load_scores, write_score_file

__all__ = [
    "LABEL_COLUMNS",
    "SCORE_COLUMNS",
    "Joined",
    "Report",
    "auroc",
    "average_precision",
    "baseline_score_rows",
    "evaluate",
    "format_report",
    "join",
    "load_labels",
    "load_scores",
    "plot_pr",
    "pr_curve",
    "random_baseline",
    "report",
    "write_score_file",
    "zscore_baseline",
]
