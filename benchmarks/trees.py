"""The parameter trees the benchmarks run on: leaf shapes only, float32.

* `one_leaf`: a single 16M-float leaf (pure bandwidth).
* `resnet`: ResNet-50's 161 parameter tensors (53 convolutions HWIO, 53 batch norms with
  scale and bias, the classifier), 25.6M floats.
* `transformer`: a 24-layer decoder (width 384, separate q/k/v, MLP 4x, 16k vocabulary),
  388 leaves, 49M floats.
* `many_leaves`: 2,000 leaves of 4,096 floats (per-leaf overhead).

`quick=True` gives small versions of the same kinds of tree, for the smoke test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Shapes = dict[str, tuple[int, ...]]


def one_leaf(quick: bool = False) -> Shapes:
    return {"w": ((1 << 16) if quick else (1 << 24),)}


def resnet(quick: bool = False) -> Shapes:
    """ResNet-50 (bottleneck blocks [3, 4, 6, 3]); `quick`: one block per stage, widths / 8."""
    div = 8 if quick else 1
    depths = [1, 1, 1, 1] if quick else [3, 4, 6, 3]
    shapes: Shapes = {}

    def conv_bn(name: str, k: int, c_in: int, c_out: int) -> None:
        shapes[f"{name}/conv"] = (k, k, c_in, c_out)
        shapes[f"{name}/bn_scale"] = (c_out,)
        shapes[f"{name}/bn_bias"] = (c_out,)

    conv_bn("stem", 7, 3, 64 // div)
    c_in = 64 // div
    for stage, (blocks, width) in enumerate(zip(depths, [64, 128, 256, 512])):
        width //= div
        for block in range(blocks):
            name = f"stage{stage}/block{block}"
            conv_bn(f"{name}/a", 1, c_in, width)
            conv_bn(f"{name}/b", 3, width, width)
            conv_bn(f"{name}/c", 1, width, 4 * width)
            if block == 0:
                conv_bn(f"{name}/downsample", 1, c_in, 4 * width)
            c_in = 4 * width
    shapes["fc/w"] = (c_in, 1000 // div)
    shapes["fc/b"] = (1000 // div,)
    return shapes


def transformer(quick: bool = False) -> Shapes:
    """A decoder: embeddings, then per layer LN, q, k, v, o, LN, MLP (16 leaves per layer)."""
    layers, d, vocab, context = (1, 64, 1024, 128) if quick else (24, 384, 16384, 1024)
    shapes: Shapes = {"embed/tokens": (vocab, d), "embed/positions": (context, d)}
    for i in range(layers):
        name = f"layer{i:02d}"
        for ln in ["ln1", "ln2"]:
            shapes[f"{name}/{ln}/scale"] = (d,)
            shapes[f"{name}/{ln}/bias"] = (d,)
        for proj in ["q", "k", "v", "o"]:
            shapes[f"{name}/attn/{proj}/w"] = (d, d)
            shapes[f"{name}/attn/{proj}/b"] = (d,)
        shapes[f"{name}/mlp/fc1/w"] = (d, 4 * d)
        shapes[f"{name}/mlp/fc1/b"] = (4 * d,)
        shapes[f"{name}/mlp/fc2/w"] = (4 * d, d)
        shapes[f"{name}/mlp/fc2/b"] = (d,)
    shapes["final_ln/scale"] = (d,)
    shapes["final_ln/bias"] = (d,)
    return shapes


def many_leaves(quick: bool = False) -> Shapes:
    return {f"leaf{i:04d}": (4096,) for i in range(50 if quick else 2000)}


TREES = {
    "16M leaf": one_leaf,
    "ResNet-50-like tree": resnet,
    "transformer-like tree": transformer,
    "2,000 x 4,096 leaves": many_leaves,
}


def size(shapes: Shapes) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


def arrays(shapes: Shapes, seed: int, scale: float = 1.0) -> dict[str, jax.Array]:
    """A tree of float32 arrays with the given shapes, normal(0, scale), made on the device."""
    key = jax.random.key(seed)
    return {
        name: scale * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
        for i, (name, shape) in enumerate(shapes.items())
    }
