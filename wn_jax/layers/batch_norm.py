"""Batch norms: mean-only batch norm (paper section 3) and the authors' `BatchNorm`.

``MeanOnlyBatchNorm`` subtracts the per-channel minibatch mean in training and
a running mean at test time, never divides by the std, then adds a learned
bias. Placed after a weight-normalized layer without bias (``use_bias=False``)
the data-dependent init sets only ``g`` and leaves the centring to it.
``BatchNorm`` is the `bn` rows' layer. Running averages live in
'batch_stats'. The linear layers they follow are elsewhere (`plain`,
`wn_layers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from wn_jax.layers import data_init

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

def _update_running(module: nn.Module, name: str, features: int,
                    init_value: float, batch_value: Array | None) -> Array:
  """Running average in 'batch_stats': new = momentum*old + (1-momentum)*batch.

  Returns the stored value; the average is not updated during `init` (as
  flax's BatchNorm) or when `batch_value` is None (evaluation).
  """
  stat = module.variable(
      "batch_stats", name,
      lambda: jnp.full((features,), init_value, jnp.float32))
  if batch_value is not None and not module.is_initializing():
    stat.value = module.momentum * stat.value + (1 - module.momentum) * batch_value
  return stat.value


class MeanOnlyBatchNorm(nn.Module):
  """Mean-only batch normalization (paper section 3): y = x - mu[x] + b.

  Linen twin of `wn_jax.nnx.MeanOnlyBatchNorm`.

  Training (`use_running_average=False`): subtract the per-channel mean over
  batch and spatial axes of this minibatch (the global batch when sharded
  under jit; `axis_name` inside shard_map/pmap), and update the running mean
  in `batch_stats['mean']` as `momentum * old + (1 - momentum) * batch_mean`
  (authors' code: 0.9, starting from 0; not updated during `init`).
  Evaluation (`use_running_average=True`): subtract the running mean.
  No division by the std. Then add the learned bias `b` (init 0).

  Input and output `[..., features]`.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  use_bias: bool = True
  bias_init: Initializer = nn.initializers.zeros
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    batch_mean = None if use_running_average else data_init.batch_mean(x, self.axis_name)
    running_mean = _update_running(self, "mean", features, 0.0, batch_mean)
    mean = running_mean if use_running_average else batch_mean
    dtype = self.dtype or x.dtype
    y = x.astype(dtype) - mean.astype(dtype)
    if self.use_bias:
      b = self.param("b", self.bias_init, (features,), self.param_dtype)
      y = y + b.astype(dtype)
    return y


class BatchNorm(nn.Module):
  """Batch normalization exactly as the authors' CIFAR-10 code (`bn` rows).

  Linen twin of `wn_jax.nnx.BatchNorm`.

  Training: `y = (x - mu) / sqrt(var + epsilon) * scale + b` with the biased
  minibatch variance; running averages `momentum * old + (1 - momentum) *
  batch` of the mean and of the variance, the latter with the correction
  `n / (n - 1)` where `n` is the BATCH SIZE (axis 0), as `BatchNormLayer`
  does, even for conv layers. Evaluation: the running averages.
  Defaults follow the code: epsilon 1e-6, momentum 0.9, scale init 1,
  bias init 0, running mean init 0 and running variance init 1.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-6
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    if use_running_average:
      batch_mean = batch_var_unbiased = None
    else:
      batch_mean, batch_var = data_init.batch_mean_and_var(x, self.axis_name)
      n = x.shape[0]
      batch_var_unbiased = batch_var * (n / max(n - 1, 1))
    running_mean = _update_running(self, "mean", features, 0.0, batch_mean)
    running_var = _update_running(self, "var", features, 1.0, batch_var_unbiased)
    if use_running_average:
      mean, var = running_mean, running_var
    else:
      mean, var = batch_mean, batch_var
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    b = self.param("b", nn.initializers.zeros, (features,), self.param_dtype)
    dtype = self.dtype or x.dtype
    mul = (scale * lax.rsqrt(var + self.epsilon)).astype(dtype)
    return (x.astype(dtype) - mean.astype(dtype)) * mul + b.astype(dtype)
