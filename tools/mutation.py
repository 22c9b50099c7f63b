"""Mutation testing of gradtx's pieces: mutmut 3, adapted to this code base.

    python tools/mutation.py run --max-children 1     # from the repository root
    python tools/mutation.py results                  # survivors; `show <name>` for a diff

The files mutated and the tests run are configured in `pyproject.toml` (`[tool.mutmut]`).
Everything else is mutmut 3 as released, with three changes made here before its CLI starts:

* Functions declared with `@factory` (or `@base.factory`), `@recorded` or
  `@functools.wraps(...)` are mutated. mutmut skips every decorated function (most of the
  math here lives in the closures of decorated factories). The trampoline keeps the
  decorator, so a factory still records its `Spec` and `inspect.signature` still reads the
  original signature; the mutant copies are left undecorated, so nothing is wrapped twice.
* Only the math and control flow are mutated: nothing under a `raise` (the message of an
  error that is raised either way), and string literals only where they are compared
  (`mode == "min"`), not in messages and argument names.
* JAX must not be initialised before a fork: mutants run from a fork server
  (`process_isolation = "forkserver"`, configured) that imports JAX but starts no backend;
  each mutant's tests then run in a fresh child, with no jit cache from another run, and
  a persistent compilation cache under `mutants/jax-cache` (keyed by the compiled program,
  so a mutant that changes the computation never hits an entry of the original).
"""

from __future__ import annotations

import os
import sys

import libcst as cst

# As tests/conftest.py, before JAX is first imported (the fork server imports it below).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Each mutant's tests run in a fresh process: a persistent compilation cache spares them
# recompiling what the mutant did not change (a changed computation has another key).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath("mutants/jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The fork server imports gradtx, and with it jaxtyping, whose pytest plugin pytest then cannot
# assertion-rewrite: a warning at configuration, an error under the suite's filterwarnings.
os.environ["PYTEST_ADDOPTS"] = (
    os.environ.get("PYTEST_ADDOPTS", "") + " -W ignore::pytest.PytestAssertRewriteWarning"
).strip()

from mutmut.mutation import file_mutation, mutators  # noqa: E402

# Decorators that return a wrapper calling the function as it is: safe to mutate beneath.
RECORDING_DECORATORS = ("factory", "base.factory", "recorded", "functools.wraps")


def _decorator_name(decorator: cst.Decorator) -> str:
    node = decorator.decorator
    if isinstance(node, cst.Call):
        node = node.func
    parts = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if isinstance(node, cst.Name):
        parts.append(node.value)
    return ".".join(reversed(parts))


def _is_recording(function: cst.FunctionDef) -> bool:
    names = [_decorator_name(d) for d in function.decorators]
    return bool(names) and all(name in RECORDING_DECORATORS for name in names)


_skip = file_mutation.MutationVisitor._skip_node_and_children


def _skip_node_and_children(self, node: cst.CSTNode) -> bool:
    if isinstance(node, cst.Raise):
        return True
    if isinstance(node, cst.FunctionDef) and _is_recording(node):
        # mutmut's own rules, for the function as if it had no decorator.
        return _skip(self, node.with_changes(decorators=[]))
    return _skip(self, node)


_arrange = file_mutation.function_trampoline_arrangement


def function_trampoline_arrangement(function, mutants, class_name):
    if not _is_recording(function):
        return _arrange(function, mutants, class_name)
    declarations, nodes, assignments, names = _arrange(
        function.with_changes(decorators=[]), mutants, class_name
    )
    trampoline, *copies = nodes
    trampoline = trampoline.with_changes(decorators=[*function.decorators, *trampoline.decorators])
    return declarations, [trampoline, *copies], assignments, names


def _compared_strings(node: cst.Comparison):
    """`a == "min"` -> `a == "XXminXX"`, also for the strings of a tuple: `m in ("a", "b")`."""
    for i, target in enumerate(node.comparisons):
        values = [target.comparator]
        if isinstance(target.comparator, (cst.Tuple, cst.List, cst.Set)):
            values = [e.value for e in target.comparator.elements]
        for value in values:
            if not isinstance(value, cst.SimpleString):
                continue
            for mutated in mutators.operator_string(value):
                comparator = target.comparator.deep_replace(value, mutated)
                comparisons = list(node.comparisons)
                comparisons[i] = target.with_changes(comparator=comparator)
                yield node.with_changes(comparisons=comparisons)


OPERATORS = [
    (t, op) for t, op in mutators.mutation_operators if op is not mutators.operator_string
] + [(cst.Comparison, _compared_strings)]

file_mutation.MutationVisitor._skip_node_and_children = _skip_node_and_children
file_mutation.function_trampoline_arrangement = function_trampoline_arrangement
file_mutation.mutation_operators = OPERATORS

if __name__ == "__main__":
    # Imported once here, by the process that forks the fork server, so that a mutant's
    # tests start without importing them again (seconds each on a loaded machine).
    # Importing JAX starts no backend; gradtx itself is imported by each child, from mutants/.
    import _hypothesis_pytestplugin  # noqa: F401
    import hypothesis  # noqa: F401
    import jax  # noqa: F401
    import jax.numpy  # noqa: F401
    import jaxtyping  # noqa: F401
    import optax  # noqa: F401
    import pytest  # noqa: F401
    from mutmut.__main__ import cli

    sys.argv[0] = "mutmut"
    cli()
