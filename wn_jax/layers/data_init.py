"""The data-dependent init's shared parts (paper section 2.2).

Per-feature batch mean and variance (also the batch norms' statistics),
`data_init_scale_and_bias` (g = init_scale / sigma[t], b = -mu[t] g), the
init orders, and v's initial draw. Layers live in the other modules of
`wn_jax.layers`; this one defines none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Array = jax.Array

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


def batch_mean(x: Array, axis_name: str | None, num_feature_dims: int = 1) -> Array:
  """Per-feature mean over every leading axis, float32: [..., *F] -> F.

  The leading axes are batch and spatial (sequence) axes; the last
  `num_feature_dims` axes index the features. Under jit with a sharded batch
  this is already the global mean; inside shard_map/pmap `axis_name`
  averages the per-device means (equal shards).
  """
  mean = jnp.mean(x.astype(jnp.float32), axis=tuple(range(x.ndim - num_feature_dims)))
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  return mean


def batch_mean_and_var(x: Array, axis_name: str | None,
                        num_feature_dims: int = 1) -> tuple[Array, Array]:
  """Per-feature mean and biased variance (mean of squared deviations)."""
  mean = batch_mean(x, axis_name, num_feature_dims)
  var = batch_mean(jnp.square(x.astype(jnp.float32) - mean), axis_name,
                    num_feature_dims)
  return mean, var


def data_init_scale_and_bias(
    t: Array,
    init_scale: float,
    epsilon: float,
    axis_name: str | None = None,
    num_feature_dims: int = 1,
) -> tuple[Array, Array]:
  """The data-dependent init (paper section 2.2) from a layer's output t.

  Args:
    t: [..., *F] output of the layer on the init batch with unit-norm (WN)
      or unscaled (`normal`) kernel and no bias.
    init_scale: wanted std of every unit's pre-activation.
    epsilon: added to the variance (a constant unit gets a finite scale).
    axis_name: mapped axis to average the statistics over (shard_map/pmap).
    num_feature_dims: how many trailing axes of t index the features.

  Returns:
    (scale, bias), float32 of shape F: scale = init_scale/sqrt(var[t] + eps),
    bias = -mean[t] * scale, so scale * t + bias has mean 0 and std
    init_scale per unit on the init batch.
  """
  mean, var = batch_mean_and_var(t, axis_name, num_feature_dims)
  scale = init_scale * lax.rsqrt(var + epsilon)
  return scale, -mean * scale
