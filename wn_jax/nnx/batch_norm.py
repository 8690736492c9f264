"""Batch norms for Flax NNX: `MeanOnlyBatchNorm` and the authors' `BatchNorm`.

The NNX twins of `wn_jax.layers.batch_norm`, on the batch statistics of
`wn_jax.ops`; they run in `data_init`'s pass without updating their running
averages (as Linen's `init`). Holds no weight normalization.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wn_jax import ops
from wn_jax.nnx.data_init import DataInitLayer

Array = jax.Array
Dtype = Any


def _running_average(stat: nnx.BatchStat, momentum: float, batch_value: Array) -> None:
  stat.set_value(momentum * stat[...] + (1 - momentum) * batch_value)


class MeanOnlyBatchNorm(DataInitLayer):
  """Mean-only batch normalization (paper section 3): y = x - mu[x] + b.

  NNX twin of `wn_jax.layers.MeanOnlyBatchNorm`.

  Training (`use_running_average=False`) subtracts the per-channel mean of
  this minibatch (global when sharded under jit; `axis_name` inside
  shard_map/pmap) and updates the running
  mean `mean` (an `nnx.BatchStat`) as `momentum * old + (1 - momentum) *
  batch_mean`, except during `data_init` (as Linen's `init`); evaluation
  subtracts the running mean. No division by the std. Then adds `b`.
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = None,
               momentum: float = 0.9, use_bias: bool = True,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
               axis_name: str | None = None, rngs: nnx.Rngs | None = None):
    del rngs  # no random init; accepted for the usual NNX signature
    self._start_init_mode()
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.dtype = dtype
    self.axis_name = axis_name
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.b = (nnx.Param(jnp.zeros((num_features,), param_dtype)) if use_bias
              else nnx.data(None))

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = _first(use_running_average, self.use_running_average)
    if use_running_average:
      mean = self.mean[...]
    else:
      mean = ops.batch_mean(x, self.axis_name)
      if not self.initializing:
        _running_average(self.mean, self.momentum, mean)
    dtype = self.dtype or x.dtype
    y = x.astype(dtype) - mean.astype(dtype)
    if self.b is not None:
      y = y + self.b[...].astype(dtype)
    return y


class BatchNorm(DataInitLayer):
  """Batch normalization exactly as the authors' CIFAR-10 code (`bn` rows).

  NNX twin of `wn_jax.layers.BatchNorm`.

  Biased minibatch variance in training; running averages of the mean and
  of the variance with the correction n/(n-1), n the batch size (axis 0);
  not updated during `data_init`. Parameters `scale` (init 1) and `b`
  (init 0); batch stats `mean` (0) and `var` (1).
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = None,
               momentum: float = 0.9, epsilon: float = 1e-6, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, axis_name: str | None = None,
               rngs: nnx.Rngs | None = None):
    del rngs
    self._start_init_mode()
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.axis_name = axis_name
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.b = nnx.Param(jnp.zeros((num_features,), param_dtype))

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = _first(use_running_average, self.use_running_average)
    if use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      mean, var = ops.batch_mean_and_var(x, self.axis_name)
      if not self.initializing:
        n = x.shape[0]
        _running_average(self.mean, self.momentum, mean)
        _running_average(self.var, self.momentum, var * (n / max(n - 1, 1)))
    dtype = self.dtype or x.dtype
    mul = (self.scale[...] * jax.lax.rsqrt(var + self.epsilon)).astype(dtype)
    return (x.astype(dtype) - mean.astype(dtype)) * mul + self.b[...].astype(dtype)


def _first(*values):
  for value in values:
    if value is not None:
      return value
  raise ValueError("use_running_average is not set: pass it to the constructor "
                   "or the call.")

