"""The paper's CIFAR-10 network in NNX, written against the same switch.

`CifarNet` is `wn_jax.models.CifarNet` layer for layer: the same layers in
the same order, the same parameter names under each layer (`linear/v`,
`linear/g`, `norm/b`, ...), and, from the same `{'noise', 'dropout'}` keys,
the same input noise and dropout masks, so with the same variables
(`convert.from_linen`) the two give the same logits and gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.core.scope import LazyRng

from wn_jax import parameterizations
from wn_jax.nnx.parameterization import NormalizedConv, NormalizedDense

Array = jax.Array

NUM_CONVS = 9


def linen_rng(key: Array, *path: str | int) -> Array:
  """The key Linen's `make_rng` derives from `key` for a scope path + count.

  `linen_rng(key, 1)` is the first `self.make_rng(name)` of the top module
  given `rngs={name: key}`; `linen_rng(key, 'Dropout_0', 1)` the first one
  of its child 'Dropout_0'. Computed by Linen's own `LazyRng`, so the NNX
  model draws exactly the numbers the Linen model draws.
  """
  return LazyRng.create(key, *path).as_jax_rng()


class CifarNet(nnx.Module):
  """The paper's CIFAR-10 network (section 5.1) in NNX.

  NNX twin of `wn_jax.models.CifarNet`.

  Gaussian noise (std `input_noise`, training only) ->
  3 x [3x3 conv `width`, lReLU] -> 2x2 max-pool -> dropout ->
  3 x [3x3 conv 2*`width`, lReLU] -> 2x2 max-pool -> dropout ->
  3x3 conv 2*`width` VALID, lReLU -> 2 x [1x1 conv 2*`width`, lReLU] ->
  global average pool -> dense `num_classes`.

  Layers: `convs[0..8]` (`NormalizedConv`, Linen's
  `NormalizedConv_0..8`) and `dense` (`NormalizedDense`, Linen's
  `NormalizedDense_0`). `wn_jax.nnx.data_init(model, x, train=True, rngs=...)`
  is the data-dependent init (in training mode, as in the authors' code).

  Call as `model(x, train=..., rngs=...)` with x `[batch, height, width,
  in_features]`; returns float32 logits `[batch, num_classes]`. `rngs` (only
  needed with `train=True`): `{'noise': key, 'dropout': key}`, the keys one
  would pass to the Linen model's `apply`, or an `nnx.Rngs` with streams
  'noise' and 'dropout' (one key drawn from each per call).
  """

  def __init__(self, *, in_features: int = 3, num_classes: int = 10, width: int = 96,
               parameterization: str = "wn", data_init: bool = True,
               init_scale: float = 1.0, input_noise: float = 0.15,
               dropout_rate: float = 0.5, leaky_relu_slope: float = 0.1,
               bn_momentum: float = 0.9, bn_epsilon: float = 1e-6,
               conv_weight_grad: str = "xla", dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    if parameterization != parameterizations.FOLDED:
      parameterizations.check_parameterization(parameterization)
    self.parameterization = parameterization
    self.input_noise = input_noise
    self.leaky_relu_slope = leaky_relu_slope
    self.bn_epsilon = bn_epsilon
    self.dtype = dtype
    norm = dict(parameterization=parameterization, init_scale=init_scale,
                data_init=data_init, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
                dtype=dtype, rngs=rngs)
    wide = 2 * width
    specs = ([(in_features, width, (3, 3), "SAME")]
             + [(width, width, (3, 3), "SAME")] * 2
             + [(width, wide, (3, 3), "SAME")] + [(wide, wide, (3, 3), "SAME")] * 2
             + [(wide, wide, (3, 3), "VALID")] + [(wide, wide, (1, 1), "SAME")] * 2)
    self.convs = nnx.List([
        NormalizedConv(i, o, k, padding=p, conv_weight_grad=conv_weight_grad,
                              **norm)
        for i, o, k, p in specs])
    self.dense = NormalizedDense(wide, num_classes, **norm)
    self.dropouts = nnx.List([nnx.Dropout(dropout_rate) for _ in range(2)])

  def __call__(self, x: Array, *, train: bool,
               rngs: Mapping[str, Array] | nnx.Rngs | None = None) -> Array:
    if train and isinstance(rngs, nnx.Rngs):
      rngs = {"noise": rngs.noise(), "dropout": rngs.dropout()}
    if train and rngs is None and (self.input_noise > 0 or self.dropouts[0].rate > 0):
      raise ValueError(
          "CifarNet(train=True) draws input noise and dropout: pass rngs=nnx.Rngs(noise=..., "
          "dropout=...) or {'noise': key, 'dropout': key}, also to "
          "wn_jax.nnx.data_init(model, x, train=True, rngs=...).")

    def lrelu(y):
      return jnp.maximum(y, self.leaky_relu_slope * y)

    def dropout(i, y):
      key = linen_rng(rngs["dropout"], f"Dropout_{i}", 1) if train else None
      return self.dropouts[i](y, deterministic=not train, rngs=key)

    if train and self.input_noise > 0:
      noise = jax.random.normal(linen_rng(rngs["noise"], 1), x.shape, jnp.float32)
      x = x + self.input_noise * noise
    x = x.astype(self.dtype)
    for i, conv in enumerate(self.convs):
      x = lrelu(conv(x, train=train))
      if i in (2, 5):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # a pure function
        x = dropout(i // 3, x)
    x = jnp.mean(x, axis=(1, 2))
    x = self.dense(x, train=train)
    return x.astype(jnp.float32)
