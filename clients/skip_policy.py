"""The skip policy of the Python suites (clients/tests, tests_v5, e2e, e2e_v5).

A test that does not run was skipped for one of two reasons:

* **by design** (:func:`skip_by_design`): the test is meant for another
  database backend, transport or pytest process of the session; nothing is
  missing and nothing is lost;
* **missing** (:func:`skip_missing`): the machine lacks something the check
  needs (nginx, kubectl, a virtualenv, a service). The check did not run.

Every other skip (a plain ``pytest.skip``, ``pytest.importorskip``, a ``skip``
or ``skipif`` mark, a module skipped at collection) is unclassified and counts
as missing, under the name ``unclassified``.

At the end of the session this plugin lists the missing-kind skips, and pytest
exits non-zero when there is any, unless the operator allows them explicitly::

    V6_TEST_ALLOW_MISSING=kubectl,systemd-analyze   # these names only
    V6_TEST_ALLOW_MISSING=all                       # every missing-kind skip

The allowed ones are listed as allowed. The short test summary (``-rs``) still
names every skip, of either kind, with its reason and place.

Each suite's conftest.py registers the plugin (``pytest_plugins =
["skip_policy"]``), so it is active under scripts/test-all.sh and in any
``pytest clients/<suite>`` run.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import NoReturn

import pytest

#: The operator's explicit opt-out: names given to skip_missing, comma-separated, or ``all``.
ALLOW_ENV = "V6_TEST_ALLOW_MISSING"
#: The name of a skip that went through neither helper.
UNCLASSIFIED = "unclassified"
#: The first words of the summary line that names what failed the run
#: (scripts/test-all.sh reads the names after it from the log).
FAIL_LINE = "skips for missing tools fail this run:"

# the attribute on a Skipped exception that skip_missing / skip_by_design set
_KIND = "v6_skip_kind"
_DESIGN = object()


def skip_by_design(reason: str) -> NoReturn:
    """Skips the running test because it is meant for another backend,
    transport or process of the session. Never fails the run."""
    __tracebackhide__ = True  # the skip's place is the caller's line
    exc = pytest.skip.Exception(f"[by design] {reason}")
    setattr(exc, _KIND, _DESIGN)
    raise exc


def skip_missing(what: str, reason: str) -> NoReturn:
    """Skips the running test because the machine lacks ``what`` (a short
    name, e.g. ``kubectl``: the name V6_TEST_ALLOW_MISSING takes). Fails the
    run unless that variable allows ``what``."""
    __tracebackhide__ = True
    exc = pytest.skip.Exception(f"[missing {what}] {reason}")
    setattr(exc, _KIND, what)
    raise exc


def allowed_names() -> set[str]:
    """The names V6_TEST_ALLOW_MISSING allows (``all`` allows every one)."""
    return {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}


class _Policy:
    def __init__(self):
        # (what, place, reason) of every missing-kind skip, in order
        self.missing: list[tuple[str, str, str]] = []

    def record(self, what: str, report) -> None:
        place, reason = report.nodeid, str(report.longrepr)
        if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            path, line, reason = report.longrepr  # line: 1-based
            place = os.path.relpath(path) + (f":{line}" if line is not None else "")
        reason = reason.removeprefix("Skipped: ").removeprefix(f"[missing {what}] ")
        self.missing.append((what, place, reason))

    def split(self) -> tuple[list, list]:
        """(refused, allowed) missing-kind skips under V6_TEST_ALLOW_MISSING."""
        allow = allowed_names()
        ok = [m for m in self.missing if "all" in allow or m[0] in allow]
        return [m for m in self.missing if m not in ok], ok


_policy = _Policy()


def pytest_configure(config):
    _policy.missing.clear()  # a fresh list per session (pytester runs several in one process)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    kind = None
    if call.excinfo is not None and isinstance(call.excinfo.value, pytest.skip.Exception):
        kind = getattr(call.excinfo.value, _KIND, None)
    if kind is _DESIGN:
        return
    _policy.record(kind if isinstance(kind, str) else UNCLASSIFIED, report)


def pytest_collectreport(report):
    if report.skipped:  # a module-level skip or importorskip: neither helper can be used there
        _policy.record(UNCLASSIFIED, report)


def pytest_sessionfinish(session, exitstatus):
    refused, _ = _policy.split()
    if refused and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _policy.missing:
        return
    refused, allowed = _policy.split()
    tr = terminalreporter
    tr.section("skips for missing tools or services", sep="=", red=bool(refused),
               yellow=not refused)
    for title, group in (("not allowed", refused), (f"allowed by {ALLOW_ENV}", allowed)):
        if not group:
            continue
        tr.write_line(f"{title}:")
        for (what, place, reason), n in Counter(group).items():
            tr.write_line(f"  {what}: {place}{f' ({n} tests)' if n > 1 else ''}: {reason}")
    if refused:
        names = ",".join(sorted({what for what, _, _ in refused}))
        tr.write_line(f"{FAIL_LINE} {names} (install them, or allow them explicitly with "
                      f"{ALLOW_ENV}={names} or {ALLOW_ENV}=all)", red=True, bold=True)
