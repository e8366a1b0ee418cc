"""Shared test set-up. The slow tests (``@pytest.mark.slow``: end-to-end trainings through ns-train and the one-command
run) are collected last, so that ``python -m pytest -q`` reports a broken fast test within the first minutes instead
of after them; ``python -m pytest -q -m "not slow"`` runs only the fast ones. Builders shared between test modules
live in ``helpers.py``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast tests first, then the slow ones, each group in collection order (a stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
