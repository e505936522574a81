"""The installed parse-edge version (from package metadata; one source: pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def software_version() -> str:
    """The installed distribution's version, or 'unknown' when run from a bare source tree."""
    try:
        return version("parse-edge")
    except PackageNotFoundError:
        return "unknown"
