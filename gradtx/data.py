r"""Mini-batches (IDEAS §1): the whole API in one namespace, `gradtx.data`.

One **epoch** is one pass over the $m$ examples, split into $\lceil m / B \rceil$ mini-batches
of $B$ examples in the order of a fresh permutation; each step sees one batch. The pieces live
in modules of one idea each, and every one of them is here:

* `gradtx.epochs`: the plan of an epoch (`epoch_indices`), `batches`, `masked_mean` and the
  sizes (`num_examples`, `num_batches`, `num_dropped`, `dropped_indices`);
* `gradtx.shuffle`: the permutations (`jax.random.permutation` by default,
  `feistel_permutation` cheaper);
* `gradtx.scan`: `scan_epoch`, a whole epoch as one compiled `lax.scan`;
* `gradtx.sharding`: `shard` / `replicate` / `state_sharding` / `shard_state` (data
  parallelism on a `jax.sharding.Mesh`, ZeRO-1 state sharding) and `process_rows` /
  `process_batches` (several hosts, with JAX's own distributed runtime).

A data-parallel step needs no special code: put the parameters on every device, split the batch
over the data axis, and `jax.jit` inserts the all-reduce of the gradient::

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    params, opt_state = replicate((params, opt_state), mesh)
    for batch in batches(jax.random.fold_in(key, epoch), data, batch_size=128):
        params, opt_state, loss = train_step(params, opt_state, shard(batch, mesh))
"""

from gradtx.checks import NotAnIntegerError
from gradtx.epochs import (
    EpochPlan,
    batches,
    dropped_indices,
    epoch_indices,
    masked_mean,
    num_batches,
    num_dropped,
    num_examples,
)
from gradtx.scan import StepFn as StepFn
from gradtx.scan import scan_epoch
from gradtx.sharding import Axis as Axis
from gradtx.sharding import (
    process_batches,
    process_rows,
    replicate,
    shard,
    shard_state,
    state_sharding,
)
from gradtx.shuffle import Permutation as Permutation
from gradtx.shuffle import feistel_permutation

# The type aliases Axis, Permutation and StepFn are importable from here too.
__all__ = [
    "EpochPlan",
    "NotAnIntegerError",
    "batches",
    "dropped_indices",
    "epoch_indices",
    "feistel_permutation",
    "masked_mean",
    "num_batches",
    "num_dropped",
    "num_examples",
    "process_batches",
    "process_rows",
    "replicate",
    "scan_epoch",
    "shard",
    "shard_state",
    "state_sharding",
]
