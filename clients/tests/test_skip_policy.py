"""The skip policy plugin (clients/skip_policy.py), run on small test files in
a pytest subprocess of its own: a skip for something missing fails the run,
V6_TEST_ALLOW_MISSING lets it pass, a by-design skip never fails it.

Nothing here uses the ``server``/``db`` fixtures: the module runs once."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from support import CLIENTS

CONFTEST = f"""
import sys
sys.path.insert(0, {str(CLIENTS)!r})
pytest_plugins = ["skip_policy"]
"""

MISSING = """
from skip_policy import skip_missing

def test_runs():
    pass

def test_needs_frobnicator():
    skip_missing("frobnicator", "frobnicator is not installed: nothing was frobnicated")
"""

BY_DESIGN = """
import pytest
from skip_policy import skip_by_design

@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param

def test_sqlite_only(backend):
    if backend != "sqlite":
        skip_by_design("the matrix runs on SQLite")
"""

UNCLASSIFIED = """
import sys
import pytest

def test_plain_skip():
    pytest.skip("no reason given to the policy")

@pytest.mark.skipif(sys.version_info > (3,), reason="a skipif mark")
def test_marked():
    pass
"""

IMPORTORSKIP = """
import pytest
pytest.importorskip("a_module_that_is_not_there_v6")

def test_never():
    pass
"""

SHARED_FIXTURE = """
import pytest
from skip_policy import skip_missing

@pytest.fixture(scope="module")
def gadget():
    skip_missing("gadget", "no gadget here")

@pytest.mark.parametrize("n", [1, 2, 3])
def test_with_gadget(gadget, n):
    pass
"""


def run(tmp_path, files: dict[str, str], allow: str | None = None):
    """pytest on `files` (name -> source) in tmp_path: (exit code, output)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # rootdir here, no outer configuration
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name, source in files.items():
        (tmp_path / name).write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k != "V6_TEST_ALLOW_MISSING"}
    if allow is not None:
        env["V6_TEST_ALLOW_MISSING"] = allow
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", "-c",
         str(tmp_path / "pytest.ini"), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    return out.returncode, out.stdout + out.stderr


def test_a_skip_for_something_missing_fails_the_run_and_names_the_opt_out(tmp_path):
    rc, out = run(tmp_path, {"test_missing.py": MISSING})
    assert rc == 1, out
    assert "1 passed, 1 skipped" in out, out
    assert ("skips for missing tools fail this run: frobnicator (install them, or allow them "
            "explicitly with V6_TEST_ALLOW_MISSING=frobnicator or V6_TEST_ALLOW_MISSING=all)") in out, out
    assert "frobnicator: test_missing.py:8: frobnicator is not installed: nothing was frobnicated" in out, out
    # -rs still names the skip, with its kind
    assert "SKIPPED [1] test_missing.py:8: [missing frobnicator] frobnicator is not installed" in out, out


@pytest.mark.parametrize("allow", ["frobnicator", "kubectl, frobnicator", "all"])
def test_the_opt_out_lets_an_allowed_missing_skip_pass(tmp_path, allow):
    rc, out = run(tmp_path, {"test_missing.py": MISSING}, allow=allow)
    assert rc == 0, out
    assert "allowed by V6_TEST_ALLOW_MISSING:\n  frobnicator: test_missing.py:8: " in out, out
    assert "fail this run" not in out, out


def test_allowing_another_name_does_not_allow_this_one(tmp_path):
    rc, out = run(tmp_path, {"test_missing.py": MISSING}, allow="kubectl,frob")
    assert rc == 1, out
    assert "fail this run: frobnicator " in out, out


def test_a_by_design_skip_passes_and_is_still_reported(tmp_path):
    rc, out = run(tmp_path, {"test_design.py": BY_DESIGN})
    assert rc == 0, out
    assert "1 passed, 1 skipped" in out, out
    assert "SKIPPED [1] test_design.py:11: [by design] the matrix runs on SQLite" in out, out
    assert "missing tools" not in out, out


def test_plain_skips_and_skip_marks_count_as_missing(tmp_path):
    rc, out = run(tmp_path, {"test_plain.py": UNCLASSIFIED})
    assert rc == 1, out
    assert "fail this run: unclassified " in out, out
    assert "unclassified: test_plain.py:6: no reason given to the policy" in out, out
    assert "a skipif mark" in out, out
    rc, out = run(tmp_path, {"test_plain.py": UNCLASSIFIED}, allow="unclassified")
    assert rc == 0, out


def test_a_module_skipped_at_collection_counts_as_missing(tmp_path):
    files = {"test_import.py": IMPORTORSKIP, "test_other.py": "def test_other():\n    pass\n"}
    rc, out = run(tmp_path, files)
    assert rc == 1, out
    assert "1 passed, 1 skipped" in out, out
    assert "fail this run: unclassified " in out, out
    assert "unclassified: test_import.py:3: could not import 'a_module_that_is_not_there_v6'" in out, out
    rc, out = run(tmp_path, files, allow="all")
    assert rc == 0, out


def test_one_missing_thing_shared_by_several_tests_is_listed_once_with_its_count(tmp_path):
    rc, out = run(tmp_path, {"test_shared.py": SHARED_FIXTURE})
    assert rc == 1, out
    # (pytest places a skip raised in a fixture at the test that asked for it)
    assert "gadget: test_shared.py:9 (3 tests): no gadget here" in out, out
    assert "SKIPPED [3] test_shared.py:9: [missing gadget] no gadget here" in out, out


def test_a_failure_is_not_hidden_by_an_allowed_skip(tmp_path):
    failing = MISSING.replace("def test_runs():\n    pass", "def test_runs():\n    assert False")
    rc, out = run(tmp_path, {"test_missing.py": failing}, allow="all")
    assert rc == 1, out
    assert "1 failed, 1 skipped" in out, out
