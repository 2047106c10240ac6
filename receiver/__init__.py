"""otad's service: OTLP in (receiver/otlp), rows (receiver/rows), the pipeline, anomaly events out."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version


def otad_version() -> str:
    """The installed otad version ("0.0.0+local" when run from a source tree that is not installed)."""
    try:
        return _pkg_version("otad")
    except PackageNotFoundError:
        return "0.0.0+local"
