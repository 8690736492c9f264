"""A weight-normalized LSTM cell for Flax NNX (`nnx.RNN` scans it).

NNX twin of `wn_jax.layers.LSTMCell`: the same parameters (names, shapes,
start values for the same draws) and the same math (`wn_jax.rnn_ops`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wn_jax import rnn_ops

Array = jax.Array
Initializer = Callable[..., Array]

DRAW_WEIGHT_INIT = jax.nn.initializers.normal(stddev=0.01)
RECURRENT_PARAMETERIZATIONS = ("normal", "wn")


class LSTMCell(nnx.RNNCellBase):
  """An LSTM cell, plain (`'normal'`) or weight-normalized per gate unit (`'wn'`).

  NNX twin of `wn_jax.layers.LSTMCell`; see it for the options. Params:
  'normal': `kernel [in, 4H]`, `recurrent_kernel [H, 4H]`; 'wn': `v`,
  `recurrent_v`, `g [4H]` (and `recurrent_g [4H]` with 'separate'); both:
  `bias [4H]`, and with peepholes `peephole_input`, `peephole_forget`,
  `peephole_output` [H]. `data_init=True` raises ValueError: the paper's
  data-dependent init is not used for recurrent models.
  Carry (c, h) [B, H]; input [B, in]; output h' [B, H]. The hidden size
  is `features` or, as flax's `nnx.LSTMCell` names it, `hidden_features`.
  """

  def __init__(self, in_features: int, features: int | None = None, *,
               hidden_features: int | None = None, parameterization: str = "wn",
               normalization: str = "separate", g_start: str = "norm",
               peepholes: bool = False, data_init: bool = False,
               kernel_init: Initializer = DRAW_WEIGHT_INIT,
               bias_init: Initializer = jax.nn.initializers.zeros,
               carry_init: Initializer = jax.nn.initializers.zeros,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if (features is None) == (hidden_features is None):
      raise TypeError("LSTMCell takes the hidden size once: `features` or (flax's name) "
                      f"`hidden_features`; got features={features}, "
                      f"hidden_features={hidden_features}.")
    features = features if features is not None else hidden_features
    if parameterization not in RECURRENT_PARAMETERIZATIONS:
      raise ValueError(f"LSTMCell parameterization must be one of "
                       f"{RECURRENT_PARAMETERIZATIONS}, got {parameterization!r}.")
    rnn_ops.check_lstm_options(normalization, g_start)
    if data_init:
      raise ValueError(
          "LSTMCell has no data-dependent init: the paper applies it to feed-forward "
          "layers only and keeps the recurrent model's initialization (section 5.3); "
          "use g_start='norm' (the plain cell's start) or 'one'.")
    self.features, self.parameterization = features, parameterization
    self.normalization, self.carry_init, self.param_dtype = normalization, carry_init, param_dtype
    shape_x, shape_h = (in_features, 4 * features), (features, 4 * features)
    kernel_x = kernel_init(rngs.params(), shape_x, param_dtype)
    kernel_h = kernel_init(rngs.params(), shape_h, param_dtype)
    if parameterization == "normal":
      self.kernel, self.recurrent_kernel = nnx.Param(kernel_x), nnx.Param(kernel_h)
    else:
      self.v, self.recurrent_v = nnx.Param(kernel_x), nnx.Param(kernel_h)
      g, recurrent_g = rnn_ops.start_scales(kernel_x, kernel_h, normalization, g_start)
      self.g = nnx.Param(g.astype(param_dtype))
      self.recurrent_g = None if recurrent_g is None else nnx.Param(
          recurrent_g.astype(param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (4 * features,), param_dtype))
    self.peepholes = peepholes
    if peepholes:
      self.peephole_input, self.peephole_forget, self.peephole_output = (
          nnx.Param(kernel_init(rngs.params(), (features,), param_dtype)) for _ in range(3))

  def __call__(self, carry: tuple[Array, Array], x: Array
               ) -> tuple[tuple[Array, Array], Array]:
    if self.parameterization == "normal":
      w_x, w_h = self.kernel[...], self.recurrent_kernel[...]
    else:
      w_x, w_h = rnn_ops.lstm_kernels(
          self.v[...], self.recurrent_v[...], self.g[...],
          None if self.recurrent_g is None else self.recurrent_g[...], self.normalization)
    peepholes = ((self.peephole_input[...], self.peephole_forget[...],
                  self.peephole_output[...]) if self.peepholes else None)
    new_carry = rnn_ops.lstm_step(w_x, w_h, self.bias[...], peepholes, carry, x)
    return new_carry, new_carry[1]

  def initialize_carry(self, input_shape: tuple[int, ...],
                       rngs: nnx.Rngs | nnx.RngStream | None = None,
                       carry_init: Initializer | None = None) -> tuple[Array, Array]:
    carry_init = carry_init or self.carry_init
    shape = tuple(input_shape[:-1]) + (self.features,)
    if isinstance(rngs, nnx.Rngs):
      rngs = rngs.carry
    key = jax.random.key(0) if rngs is None else rngs()  # the default carry is zeros
    c_key, h_key = jax.random.split(key)
    return carry_init(c_key, shape, self.param_dtype), carry_init(h_key, shape, self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1
