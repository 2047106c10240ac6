"""Shared test setup: make tests/ helpers importable (otlp_sink) and keep torch to the CI machine's cores."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)
