"""The README's runnable examples (the blocks marked `<!-- readme-test -->`) run as shown."""

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def marked_blocks() -> list[str]:
    text = README.read_text()
    return re.findall(r"<!-- readme-test -->\n```python\n(.*?)```", text, re.S)


def test_readme_examples_run_and_print_what_they_say(tmp_path):
    blocks = marked_blocks()
    assert len(blocks) == 5
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(block.replace("/tmp/gradtx_ckpt", str(tmp_path / "ckpt")), namespace)
    printed = out.getvalue().splitlines()
    assert printed[0] == (
        "chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-08), scale_by_learning_rate(0.001))"
    )
    assert np.isclose(float(printed[1]), 0.01)  # the learning rate the step used
    assert printed[2] == "1"  # the NaN step was skipped and counted
    assert printed[3] == printed[0]
    assert np.isclose(float(printed[4]), 8.5)
    assert printed[5] == (
        "chain(clip_by_global_norm(1.0), chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-08), "
        "add_decayed_weights(weight_decay=0.05), scale_by_learning_rate("
        "warmup_cosine_decay_schedule(0.0, 0.0003, 100, 10000, exponent=1.0))))"
    )


def test_readme_ten_lines_train(tmp_path):
    namespace: dict = {}
    exec(marked_blocks()[0], namespace)
    x = jax.random.normal(jax.random.key(0), (64, 3))
    y = x @ jnp.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]]) + 1.0
    params, state = namespace["params"], namespace["state"]
    before = float(namespace["loss"](params, x, y))
    for _ in range(2000):
        params, state = namespace["step"](params, state, x, y)
    assert float(namespace["loss"](params, x, y)) < 0.01 * before


def test_the_zoo_table_is_the_zoo():
    # the README's table of optimisers is what `python benchmarks/zoo.py` prints: the same
    # list the zoo benchmark times, each chain read from the optimiser's own record
    spec = importlib.util.spec_from_file_location("zoo", README.parent / "benchmarks" / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    table = re.search(r"<!-- zoo-table -->\n(.*?)\n<!-- /zoo-table -->", README.read_text(), re.S)
    assert table is not None, "README: no <!-- zoo-table --> section"
    assert table.group(1).splitlines() == zoo.readme_table(), "run python benchmarks/zoo.py"
