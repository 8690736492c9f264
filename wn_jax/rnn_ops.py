"""The LSTM's math, weight-normalized per gate unit, shared by the Linen and
the NNX cells (`wn_jax.layers.recurrent`, `wn_jax.nnx.recurrent`).

An LSTM step (the gate order and the peepholes of Blocks' `LSTM`, which the
reference DRAW code runs on):

    a = x W_x + h W_h + b                     [B, 4H]: input, forget, cell, output
    i = sigmoid(a_i + p_i * c),  f = sigmoid(a_f + p_f * c)
    c' = f * c + i * tanh(a_c)
    o = sigmoid(a_o + p_o * c'),  h' = o * tanh(c')

(the peephole terms only with peepholes). Weight normalization (paper eq. 2)
gives every column of W_x and W_h, one per unit of one gate, its own scale:
`normalization='separate'` normalizes W_x's and W_h's columns on their own
(two g per gate unit: `g` [4H] and `recurrent_g` [4H]); `'joint'` normalizes
the stacked column [W_x; W_h] (one `g` [4H]), eq. 1 read literally with
input [x; h]. Biases and peepholes are not weight vectors of a neuron and
stay plain.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from wn_jax.ops import (
  NORM_EPSILON,
  check_g_start,
  direction_norm,
  start_scale,
  weight_normalized_kernel,
)

Array = jax.Array

NORMALIZATIONS = ("separate", "joint")
GATES = ("input", "forget", "cell", "output")


def check_lstm_options(normalization: str, g_start: str) -> None:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
  check_g_start(g_start)


def start_scales(v_x: Array, v_h: Array, normalization: str, g_start: str
                 ) -> tuple[Array, Array | None]:
  """The scales' start values: ('norm') ||v|| per gate unit, so that w = v
  and the cell starts as the plain cell with kernels v; ('one') 1.
  Returns (g [4H], recurrent_g [4H] or None for 'joint')."""
  if normalization == "joint":
    v = jnp.concatenate([v_x, v_h], axis=0)
    return start_scale(direction_norm(v)[0], g_start), None
  return start_scale(direction_norm(v_x)[0], g_start), start_scale(direction_norm(v_h)[0], g_start)


def lstm_kernels(v_x: Array, v_h: Array, g: Array, recurrent_g: Array | None,
                 normalization: str, norm_epsilon: float = NORM_EPSILON
                 ) -> tuple[Array, Array]:
  """W_x [in, 4H], W_h [H, 4H] from the directions and scales (eq. 2 per
  gate unit, each column normalized over its inputs)."""
  if normalization == "joint":
    w = weight_normalized_kernel(jnp.concatenate([v_x, v_h], axis=0), g,
                                 norm_epsilon=norm_epsilon)
    return w[:v_x.shape[0]], w[v_x.shape[0]:]
  return (weight_normalized_kernel(v_x, g, norm_epsilon=norm_epsilon),
          weight_normalized_kernel(v_h, recurrent_g, norm_epsilon=norm_epsilon))


def lstm_step(w_x: Array, w_h: Array, b: Array, peepholes: tuple[Array, Array, Array] | None,
              carry: tuple[Array, Array], x: Array) -> tuple[Array, Array]:
  """One LSTM step: carry (c, h) [B, H], x [B, in] -> (c', h')."""
  c, h = carry
  a = x @ w_x.astype(x.dtype) + h @ w_h.astype(h.dtype) + b
  a_i, a_f, a_c, a_o = jnp.split(a, 4, axis=-1)
  if peepholes is not None:
    p_i, p_f, p_o = peepholes
    a_i, a_f = a_i + p_i * c, a_f + p_f * c
  new_c = jax.nn.sigmoid(a_f) * c + jax.nn.sigmoid(a_i) * jnp.tanh(a_c)
  if peepholes is not None:
    a_o = a_o + p_o * new_c
  return new_c, jax.nn.sigmoid(a_o) * jnp.tanh(new_c)


def fold_lstm(params: dict[str, Any], normalization: str | None = None) -> dict[str, Any]:
  """A 'wn' cell's params as the 'normal' cell's: `kernel = g v/||v||`
  (and the recurrent kernel), bias and peepholes as they are. The plain cell
  with these params computes the same outputs and states.

  The normalization is read from the params ('separate' has a
  `recurrent_g`, 'joint' has none); `normalization`, if given, must agree
  (ValueError otherwise: folding one as the other gives a wrong cell)."""
  if "v" not in params or "recurrent_v" not in params or "g" not in params:
    raise ValueError("fold_lstm: the params have no 'v', 'recurrent_v' and 'g': not a "
                     f"weight-normalized LSTMCell (keys {sorted(params)}).")
  found = "separate" if "recurrent_g" in params else "joint"
  if normalization is not None and normalization != found:
    raise ValueError(f"fold_lstm: normalization={normalization!r}, but the params are a "
                     f"{found!r} cell ({'with' if found == 'separate' else 'without'} "
                     "'recurrent_g'); leave normalization out to read it from the params.")
  w_x, w_h = lstm_kernels(params["v"], params["recurrent_v"], params["g"],
                                  params.get("recurrent_g"), found)
  folded = {"kernel": w_x.astype(params["v"].dtype),
            "recurrent_kernel": w_h.astype(params["v"].dtype), "bias": params["bias"]}
  folded.update({k: p for k, p in params.items() if k.startswith("peephole_")})
  return folded
