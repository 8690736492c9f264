"""The data-dependent init's shared parts (paper section 2.2).

Per-feature batch mean and variance (also the batch norms' statistics) and
`data_init_scale_and_bias` (g = init_scale / sigma[t], b = -mu[t] g), both
written in `wn_jax.ops` and named here for the layers; the init orders, and
v's initial draw. Layers live in the other modules of
`wn_jax.layers`; this one defines none.
"""

from __future__ import annotations

from flax import linen as nn

# The math is written once in `wn_jax.ops`, shared with the NNX layers.
from wn_jax.ops import batch_mean, batch_mean_and_var, data_init_scale_and_bias

__all__ = ["INIT_ORDERS", "batch_mean", "batch_mean_and_var", "check_init_order",
           "data_init_scale_and_bias", "default_v_init"]

# Authors' code: v ~ N(0, 0.05) for weight norm and for batch norm's kernel.
default_v_init = nn.initializers.normal(stddev=0.05)


# How the data-dependent init extends to a deep network (see `WeightNorm`).
INIT_ORDERS = ("sequential", "independent")


def check_init_order(init_order: str) -> None:
  """Raises ValueError naming the valid choices for an unknown init order."""
  if init_order not in INIT_ORDERS:
    raise ValueError(
        f"Unknown init_order {init_order!r}; valid ones are "
        f"{', '.join(INIT_ORDERS)}.")
