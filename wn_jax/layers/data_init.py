"""The data-dependent init's shared parts (paper section 2.2).

Per-feature batch mean and variance (also the batch norms' statistics) and
`data_init_scale_and_bias` (g = init_scale / sigma[t], b = -mu[t] g), the
init orders and v's initial draw, all written in `wn_jax.ops` (shared with
the NNX layers) and named here for the Linen layers; and the Linen-only
switch of the whole init, `no_data_init`. Layers live in the other modules
of `wn_jax.layers`; this one defines none.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from flax import linen as nn

# The math is written once in `wn_jax.ops`, shared with the NNX layers.
from wn_jax.ops import batch_mean, batch_mean_and_var, data_init_scale_and_bias
from wn_jax.parameterizations import INIT_ORDERS, check_init_order, default_v_init

__all__ = ["INIT_ORDERS", "batch_mean", "batch_mean_and_var", "check_init_order",
           "data_init_scale_and_bias", "default_v_init", "no_data_init", "runs_data_init"]

_NO_DATA_INIT = contextvars.ContextVar("wn_jax_no_data_init", default=False)


@contextlib.contextmanager
def no_data_init() -> Iterator[None]:
  """Within it, `model.init` of any Linen model built from the public layers
  (`WeightNorm`, `WNDense`, `WNConv`, `WNConvTranspose`, the `Normalized*`
  switch, `PlainDense`/`PlainConv`) skips the data-dependent init: g starts
  at its plain start (`g_start`, ||v|| by default), b at 0, a `normal`
  layer's frozen scale at 1. The variables have the same tree, shapes and
  dtypes as after the data init, so this is the init for shapes
  (`jax.eval_shape(model.init, ...)`), for restoring a checkpoint, or for a
  quick check on a dummy batch:

      with wn_jax.no_data_init():
        variables = model.init(key, jnp.ones((1, 32, 32, 3)))

  It holds while tracing, so `jax.jit`/`jax.eval_shape` of `model.init`
  called inside it see it too. NNX layers need nothing: they hold their
  plain start from construction until `wn_jax.nnx.data_init` runs.
  """
  token = _NO_DATA_INIT.set(True)
  try:
    yield
  finally:
    _NO_DATA_INIT.reset(token)


def runs_data_init(module: nn.Module) -> bool:
  """Whether `module` (with a `data_init` field) runs its data-dependent
  init in this call: in `init`, with `data_init=True`, outside `no_data_init`."""
  return module.data_init and module.is_initializing() and not _NO_DATA_INIT.get()
