"""Exact balance history of Binance USD-M futures accounts."""

from __future__ import annotations

import re
from pathlib import Path


def package_version() -> str:
    """This recorder's version: the installed distribution's, else the checkout's pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recorder")
    except PackageNotFoundError:
        pass
    # Run from a checkout on PYTHONPATH, never installed: the version is in pyproject.toml.
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1) if found else "unknown"
