"""The development detection benchmark (`benchmarks/detection.py`): datasets, the offline protocol, trivial
baselines, the replay through `otad serve`, and the report. Labels stay here: otad never sees them."""
