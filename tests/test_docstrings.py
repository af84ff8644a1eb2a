"""Every docstring example under ``src/scrutiny`` runs here, one test per docstring.

:class:`doctest.DocTestFinder` walks every module of the package; each docstring
with ``>>>`` examples becomes ``test_docstring[<qualified name>]``, e.g.
``test_docstring[scrutiny.attacks.whitebox.pgd.PGD]``. Examples run like the rest
of the suite (torch threads and a temporary ``SCRUTINY_CACHE`` from ``conftest.py``;
the zoo's weights ship with the package, so ``pretrained("digits-cnn")`` only loads
a file), with torch's global RNG seeded to 0 and restored afterwards, and
``tempfile`` writing under the test's ``tmp_path``. Output is compared with
``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``; print rounded numbers or booleans, not
raw floats whose last digits vary across machines.

Examples should take a second or two. One that cannot be made fast (a training
run, a long attack) says so with a comment line in its examples::

    >>> # slow_doc: trains the zoo's robust model (about 5 minutes)

It is then marked ``slow_doc`` and skipped unless ``SCRUTINY_SLOW_DOCS=1``:
``SCRUTINY_SLOW_DOCS=1 .venv/bin/python -m pytest tests/test_docstrings.py -m slow_doc``.
"""

from __future__ import annotations

import doctest
import importlib
import io
import os
import pkgutil
import re
import tempfile

import pytest
import torch

import scrutiny

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
SLOW = re.compile(r"^\s*>>>\s*#\s*slow_doc\b", re.MULTILINE)
RUN_SLOW = os.environ.get("SCRUTINY_SLOW_DOCS") == "1"


def _modules() -> list[str]:
    names = [scrutiny.__name__]
    for info in pkgutil.walk_packages(scrutiny.__path__, scrutiny.__name__ + ".", onerror=lambda n: None):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def _collect() -> list:
    """One param per docstring with examples; a module that fails to import is one failing param."""
    finder = doctest.DocTestFinder()
    params = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # reported by the test, not hidden by collection
            params.append(pytest.param(name, exc, id=f"{name} (import)"))
            continue
        for test in finder.find(module, name):
            if not test.examples:
                continue
            marks = ()
            if SLOW.search(test.docstring or ""):
                marks = (pytest.mark.slow_doc,
                         pytest.mark.skipif(not RUN_SLOW, reason="slow_doc: set SCRUTINY_SLOW_DOCS=1"))
            params.append(pytest.param(name, test, id=test.name, marks=marks))
    return params


@pytest.mark.parametrize("module, test", _collect())
def test_docstring(module, test, tmp_path, monkeypatch):
    if isinstance(test, Exception):
        raise test
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        result = runner.run(test, out=out.write)
    if result.failed:
        pytest.fail(f"{result.failed} of {result.attempted} examples of {test.name} failed "
                    f"({test.filename}:{test.lineno}):\n{out.getvalue()}", pytrace=False)
