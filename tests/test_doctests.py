"""Every Example in keras_cskd's docstrings runs and shows what it says, one test per module.

Runs on the tensorflow backend only: the examples are backend-free, and one
backend is enough to keep them true.
"""

import doctest
import importlib
import pathlib

import keras
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_cskd"


def module_names():
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


@pytest.mark.parametrize("name", module_names())
def test_examples_run(name, tmp_path, monkeypatch):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the examples run on the tensorflow backend only; one backend is enough")
    monkeypatch.chdir(tmp_path)  # Examples that write relative paths write here.
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name}:\n" + "".join(
        report
    )
