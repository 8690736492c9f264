"""The paper's CIFAR-10 network (section 5.1), written against the parameterization switch.

One definition serves all five of the paper's parameterizations; the config
string `model.parameterization` picks one.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from wn_jax.layers.data_init import check_init_order
from wn_jax.layers.parameterization import (
  NormalizedConv,
  NormalizedDense,
  check_parameterization,
)

Array = jax.Array


class CifarNet(nn.Module):
  """The paper's CIFAR-10 network (section 5.1; authors' `lasagne/train.py`).

  Gaussian noise (std `input_noise`, training only) ->
  3 x [3x3 conv `width`, lReLU] -> 2x2 max-pool -> dropout ->
  3 x [3x3 conv 2*`width`, lReLU] -> 2x2 max-pool -> dropout ->
  3x3 conv 2*`width` VALID, lReLU -> 2 x [1x1 conv 2*`width`, lReLU] ->
  global average pool -> dense `num_classes` (normalised too, no nonlinearity).
  The paper's network has `width=96` (96 and 192 channels).

  Every conv and the dense layer go through `NormalizedConv` /
  `NormalizedDense` with `parameterization`. `model.init(rngs, x,
  train=True)` with rngs {'params', 'noise', 'dropout'} is the
  data-dependent init, in training mode as in the authors' code;
  `init_order` ('sequential', the authors' code, or 'independent') says how
  it extends over the layers (see `wn_jax.layers.weight_norm.WeightNorm`). Unknown
  `parameterization` or `init_order` values raise ValueError at construction.
  `parameterization='folded'` is the inference form `wn_jax.fold` returns.

  Input `[batch, height, width, 3]` (whitened), output float32 logits
  `[batch, num_classes]`.
  """
  num_classes: int = 10
  width: int = 96
  parameterization: str = "wn"
  data_init: bool = True
  init_scale: float = 1.0
  init_order: str = "sequential"
  input_noise: float = 0.15
  dropout_rate: float = 0.5
  leaky_relu_slope: float = 0.1
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  conv_weight_grad: str = "xla"
  dtype: Any = jnp.float32

  def __post_init__(self):
    check_parameterization(self.parameterization, folded=True)
    check_init_order(self.init_order)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    norm_kwargs = dict(
        parameterization=self.parameterization, data_init=self.data_init,
        init_scale=self.init_scale, init_order=self.init_order,
        bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    conv = functools.partial(
        NormalizedConv, conv_weight_grad=self.conv_weight_grad,
        **norm_kwargs)

    def lrelu(y):
      return jnp.maximum(y, self.leaky_relu_slope * y)

    if train and self.input_noise > 0:
      noise = jax.random.normal(self.make_rng("noise"), x.shape, jnp.float32)
      x = x + self.input_noise * noise
    x = x.astype(self.dtype)

    for _ in range(3):
      x = lrelu(conv(self.width, (3, 3))(x, train=train))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    for _ in range(3):
      x = lrelu(conv(2 * self.width, (3, 3))(x, train=train))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = lrelu(conv(2 * self.width, (3, 3), padding="VALID")(x, train=train))
    x = lrelu(conv(2 * self.width, (1, 1))(x, train=train))
    x = lrelu(conv(2 * self.width, (1, 1))(x, train=train))
    x = jnp.mean(x, axis=(1, 2))
    x = NormalizedDense(self.num_classes, **norm_kwargs)(x, train=train)
    return x.astype(jnp.float32)
