"""A weight-normalized LSTM cell for Flax Linen (`nn.RNN` scans it), and its fold.

The math (`wn_jax.rnn_ops`) is shared with the NNX twin,
`wn_jax.nnx.LSTMCell`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from wn_jax import rnn_ops
from wn_jax.rnn_ops import fold_lstm  # noqa: F401 (public here, as ever)

Array = jax.Array
Initializer = Callable[..., Array]

# The reference DRAW code initialises every weight with N(0, 0.01^2).
DRAW_WEIGHT_INIT = nn.initializers.normal(stddev=0.01)
RECURRENT_PARAMETERIZATIONS = ("normal", "wn")


class LSTMCell(nn.RNNCellBase):
  """An LSTM cell, plain (`parameterization='normal'`) or weight-normalized
  per gate unit (`'wn'`, paper eq. 2 on every column of the input and the
  recurrent kernel; see `wn_jax.rnn_ops` for the step).

  Linen twin of `wn_jax.nnx.LSTMCell`.

  Attributes:
    features: H, the hidden units.
    parameterization: 'normal' (params `kernel [in, 4H]`, `recurrent_kernel
      [H, 4H]`) or 'wn' (`v [in, 4H]`, `recurrent_v [H, 4H]`, `g [4H]`, and
      `recurrent_g [4H]` with separate normalization).
    normalization: 'separate' (W_x's and W_h's columns each normalized on
      their own: two g per gate unit) or 'joint' (the stacked [W_x; W_h]
      column: one g).
    g_start: 'norm' (g = ||v||: w = v, the cell starts as the `normal` cell
      with kernels v) or 'one' (g = 1: every column of norm 1).
    peepholes: the diagonal cell-to-gate weights of Blocks' LSTM
      (`peephole_input`, `peephole_forget`, `peephole_output`, each [H]),
      left plain: they are not a neuron's weight vector.
    data_init: must stay False. The paper's data-dependent init is for
      feed-forward layers; a recurrent kernel sees its own outputs, so its
      statistics depend on the step, and the paper does not use the init
      for its recurrent model (section 5.3 keeps "the same initialization
      method"). True raises ValueError.
    kernel_init: init of v (or the kernels), and of the peepholes.
    bias_init: init of `bias [4H]`.
  Carry (c, h), each [B, H]; input [B, in]; output h' [B, H].
  """
  features: int
  parameterization: str = "wn"
  normalization: str = "separate"
  g_start: str = "norm"
  peepholes: bool = False
  data_init: bool = False
  kernel_init: Initializer = DRAW_WEIGHT_INIT
  bias_init: Initializer = nn.initializers.zeros
  carry_init: Initializer = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  def _check(self) -> None:
    if self.parameterization not in RECURRENT_PARAMETERIZATIONS:
      raise ValueError(f"LSTMCell parameterization must be one of "
                       f"{RECURRENT_PARAMETERIZATIONS}, got {self.parameterization!r}.")
    rnn_ops.check_lstm_options(self.normalization, self.g_start)
    if self.data_init:
      raise ValueError(
          "LSTMCell has no data-dependent init: the paper applies it to feed-forward "
          "layers only and keeps the recurrent model's initialization (section 5.3); "
          "use g_start='norm' (the plain cell's start) or 'one'.")

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], x: Array
               ) -> tuple[tuple[Array, Array], Array]:
    self._check()
    shape_x, shape_h = (x.shape[-1], 4 * self.features), (self.features, 4 * self.features)
    if self.parameterization == "normal":
      w_x = self.param("kernel", self.kernel_init, shape_x, self.param_dtype)
      w_h = self.param("recurrent_kernel", self.kernel_init, shape_h, self.param_dtype)
    else:
      v_x = self.param("v", self.kernel_init, shape_x, self.param_dtype)
      v_h = self.param("recurrent_v", self.kernel_init, shape_h, self.param_dtype)
      g0, recurrent_g0 = rnn_ops.start_scales(v_x, v_h, self.normalization, self.g_start)
      g = self.param("g", lambda *_: g0.astype(self.param_dtype), g0.shape)
      recurrent_g = (None if recurrent_g0 is None else self.param(
          "recurrent_g", lambda *_: recurrent_g0.astype(self.param_dtype), recurrent_g0.shape))
      w_x, w_h = rnn_ops.lstm_kernels(v_x, v_h, g, recurrent_g, self.normalization)
    b = self.param("bias", self.bias_init, (4 * self.features,), self.param_dtype)
    peepholes = None
    if self.peepholes:
      peepholes = tuple(self.param(f"peephole_{gate}", self.kernel_init, (self.features,),
                                   self.param_dtype) for gate in ("input", "forget", "output"))
    new_carry = rnn_ops.lstm_step(w_x, w_h, b, peepholes, carry, x)
    return new_carry, new_carry[1]

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> tuple[Array, Array]:
    shape = tuple(input_shape[:-1]) + (self.features,)
    c_key, h_key = jax.random.split(rng)
    return (self.carry_init(c_key, shape, self.param_dtype),
            self.carry_init(h_key, shape, self.param_dtype))

  @property
  def num_feature_axes(self) -> int:
    return 1
