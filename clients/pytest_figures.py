"""The `figures` fixture of both suites: measured figures (counts, recovery
times, log growth) printed into the run's output even when the test passes,
where pytest would otherwise keep a passing test's output to itself."""
from __future__ import annotations

import pytest


@pytest.fixture
def figures(request):
    """`figures(*lines)` prints past pytest's output capture."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def show(*lines: str) -> None:
        with capture.global_and_fixture_disabled():
            print(*lines, flush=True)

    return show
