"""Every public function documents every parameter, in its own `Args` section."""

import inspect
import re

import pytest

import gradtx
from gradtx import (
    contrib,
    data,
    microbatching,
    projections,
    safe_math,
    transforms,
    tree_arithmetic,
    tree_build,
    tree_moments,
    tree_reductions,
    tree_state,
    tree_utils,
)

TREE_MODULES = (tree_utils, tree_arithmetic, tree_reductions, tree_build, tree_moments, tree_state)

PUBLIC = sorted(
    {
        (module.__name__, name)
        for module in (
            gradtx,
            data,
            gradtx.schedules,
            *TREE_MODULES,
            projections,
            safe_math,
            microbatching,
            contrib,
            transforms,
        )
        for name in module.__all__
        if inspect.isfunction(inspect.unwrap(getattr(module, name)))
    }
)


def _documented(doc: str) -> set[str]:
    """The parameter names listed in a Google-style `Args:` section."""
    match = re.search(r"^\s*Args:\s*\n(.*?)(?:^\s*\n\s*[A-Z][a-z]+:|\Z)", doc, re.M | re.S)
    if match is None:
        return set()
    return set(re.findall(r"^\s{4,8}\**(\w+)(?: \(.*?\))?:", match.group(1), re.M))


@pytest.mark.parametrize("module, name", PUBLIC, ids=lambda x: x)
def test_every_parameter_has_an_args_entry(module, name):
    fn = getattr(__import__(module, fromlist=["_"]), name)
    parameters = set(inspect.signature(fn).parameters)
    if not parameters:
        return
    doc = inspect.getdoc(fn) or ""
    assert "Args: as" not in doc, f"{name}: write its Args out instead of pointing elsewhere"
    missing = parameters - _documented(doc)
    assert not missing, f"{module}.{name} documents no {sorted(missing)} in its Args"
