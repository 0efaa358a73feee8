"""The ``Examples`` sections of the public core functions run, and show what they say (issue 18, item 6)."""

from __future__ import annotations

import doctest
import importlib

import pytest

#: Modules whose docstring examples are part of the contract: reading a volume, vectors, peak finding,
#: pairing and scoring.
MODULES = ("app.core.imageio.reading", "app.core.pairs", "app.core.evaluate.scoring", "app.core.inference.peaks",
           "app.core.inference.pairing")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see above)"
