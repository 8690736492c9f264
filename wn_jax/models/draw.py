"""DRAW (Gregor et al. 2015) as the WN paper's section 5.3 trained it: the
reference code jbornschein/draw (on Blocks), written against the
parameterization switch (../shared/DRAW_RECIPE.md, section 2).

For t = 1..T (`glimpses`), from zero canvas and zero LSTM states:

    x^ = x - sigmoid(c_{t-1})                                error image
    r_t = read([x, x^]; attention from h^dec_{t-1})          [B, 2 N_r^2]
    h^enc_t = LSTM_enc([r_t, h^dec_{t-1}])                   the input kernel
                                                             covers both
    mu_t, log sigma_t = linear(h^enc_t), linear(h^enc_t)     q(z_t | x)
    z_t = mu_t + sigma_t eps_t,  eps_t ~ N(0, I)
    h^dec_t = LSTM_dec(z_t)
    c_t = c_{t-1} + write(h^dec_t)                           [B, H, W] logits

The LSTMs are Blocks' (peepholes; recurrent kernel without bias; the gate
biases are the input map's), `wn_jax.layers.LSTMCell`. Read and write use
the selective attention of `wn_jax.models.draw_attention` (`read_n` 2,
`write_n` 5 in the paper's model); `read_n = write_n = 0` is the model
without attention (read [x, x^], write a linear map to H W).

Every weight matrix goes through `parameterization` ('normal' or 'wn',
paper eq. 2 per output unit), drawn from N(0, 0.01^2) as in the reference
code; biases start at 0. No data-dependent init: the paper keeps the
recurrent model's initialization (section 3, last paragraph; section 5.3).
`wn_jax.parameterizations.plain_from_weight_norm` turns 'wn' variables
into the 'normal' ones computing the same function, so both arms start
from one draw.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from wn_jax.layers.parameterization import NormalizedDense
from wn_jax.layers.recurrent import (
  DRAW_WEIGHT_INIT,
  RECURRENT_PARAMETERIZATIONS,
  LSTMCell,
)
from wn_jax.models import draw_attention
from wn_jax.rnn_ops import check_lstm_options

Array = jax.Array
Carry = tuple[Array, tuple[Array, Array], tuple[Array, Array]]  # canvas, encoder, decoder


class DRAWOutput(NamedTuple):
  """canvas [B, H, W]: the final logits c_T; mean, log_std [T, B, latent]:
  each glimpse's posterior; canvases [T, B, H, W] every c_t (only with
  `keep_canvases`, else None)."""
  canvas: Array
  mean: Array
  log_std: Array
  canvases: Array | None


class _DRAWStep(nn.Module):
  """One glimpse of `DRAW` (its fields are DRAW's; see there). Called as
  `(carry, eps [B, latent], x [B, H, W] or None)`: with x, the inference
  step; with None, a step of the generative model alone (z_t = eps)."""
  image_shape: tuple[int, int]
  latent: int
  encoder_units: int
  decoder_units: int
  read_n: int
  write_n: int
  parameterization: str
  normalization: str
  g_start: str
  peepholes: bool
  keep_canvases: bool

  def setup(self):
    dense = functools.partial(NormalizedDense, parameterization=self.parameterization,
                              data_init=False, kernel_init=DRAW_WEIGHT_INIT,
                              g_start=self.g_start)
    cell = functools.partial(LSTMCell, parameterization=self.parameterization,
                             normalization=self.normalization, g_start=self.g_start,
                             peepholes=self.peepholes)
    height, width = self.image_shape
    self.encoder = cell(self.encoder_units)
    self.posterior_mean = dense(self.latent)
    self.posterior_log_std = dense(self.latent)
    self.decoder = cell(self.decoder_units)
    if self.read_n:
      self.read_attention = dense(5)
    if self.write_n:
      self.write_attention = dense(5)
      self.write_patch = dense(self.write_n * self.write_n)
    else:
      self.write_patch = dense(height * width)

  def _read(self, x: Array, x_error: Array, h_decoder: Array) -> Array:
    """[B, 2 N_r^2] (attention) or [B, 2 H W] (none)."""
    batch = x.shape[0]
    if not self.read_n:
      return jnp.concatenate([x.reshape(batch, -1), x_error.reshape(batch, -1)], axis=-1)
    height, width = self.image_shape
    attention = draw_attention.attention_from_linear(
        self.read_attention(h_decoder, train=True), height, width, self.read_n)
    glimpses = [draw_attention.read(image, attention, self.read_n) for image in (x, x_error)]
    return jnp.concatenate([g.reshape(batch, -1) for g in glimpses], axis=-1)

  def _write(self, h_decoder: Array) -> Array:
    """The canvas update [B, H, W]."""
    height, width = self.image_shape
    patch = self.write_patch(h_decoder, train=True)
    if not self.write_n:
      return patch.reshape(-1, height, width)
    attention = draw_attention.attention_from_linear(
        self.write_attention(h_decoder, train=True), height, width, self.write_n)
    return draw_attention.write(patch.reshape(-1, self.write_n, self.write_n), attention,
                                height, width)

  def __call__(self, carry: Carry, eps: Array, x: Array | None):
    canvas, encoder_state, decoder_state = carry
    h_decoder = decoder_state[1]
    if x is None:
      z, mean, log_std = eps, jnp.zeros_like(eps), jnp.zeros_like(eps)
    else:
      r = self._read(x, x - jax.nn.sigmoid(canvas), h_decoder)
      encoder_state, h_encoder = self.encoder(encoder_state,
                                              jnp.concatenate([r, h_decoder], axis=-1))
      mean = self.posterior_mean(h_encoder, train=True)
      log_std = self.posterior_log_std(h_encoder, train=True)
      z = mean + jnp.exp(log_std) * eps
    decoder_state, h_decoder = self.decoder(decoder_state, z)
    canvas = canvas + self._write(h_decoder)
    outputs = (mean, log_std, canvas if self.keep_canvases else None)
    return (canvas, encoder_state, decoder_state), outputs


class DRAW(nn.Module):
  """The DRAW model of section 5.3 (see the module docstring).

  `__call__(x, eps)`: x [B, H, W] binary images, eps [T, B, latent] the
  posterior noise of every glimpse (the caller draws it, so a step's noise
  is a function of its key alone) -> `DRAWOutput`. `generate(eps)`: the
  generative model alone, z_t = eps_t -> `DRAWOutput` (mean, log_std zero).
  The likelihood is Bernoulli with logits `canvas`.

  Attributes:
    image_shape: (H, W).
    glimpses: T, the steps (64 in the paper's model).
    encoder_units / decoder_units: LSTM sizes (256 / 256).
    latent: z per glimpse (100).
    read_n / write_n: attention grids (2 / 5); 0 and 0 = no attention.
    parameterization: 'normal' or 'wn' (every weight matrix, LSTMs included).
    normalization, peepholes: the LSTM cells' (`LSTMCell`).
    g_start: where every g of 'wn' starts, in the LSTM cells and the five
      dense maps alike: 'norm' (g = ||v||, the normal model's start) or
      'one' (g = 1).
    keep_canvases: also return every c_t (pictures).
    init_scale, data_init: the loop's init fields (`wn_jax.tasks`); DRAW
      has no data-dependent init (the paper keeps the recurrent model's
      initialization), so `init_scale` is unused and `data_init=True`
      raises ValueError.
  """
  image_shape: tuple[int, int] = (28, 28)
  glimpses: int = 64
  encoder_units: int = 256
  decoder_units: int = 256
  latent: int = 100
  read_n: int = 2
  write_n: int = 5
  parameterization: str = "wn"
  normalization: str = "separate"
  g_start: str = "norm"
  peepholes: bool = True
  keep_canvases: bool = False
  init_scale: float = 1.0
  data_init: bool = False

  def __post_init__(self):
    if self.parameterization not in RECURRENT_PARAMETERIZATIONS:
      raise ValueError(f"DRAW's parameterization must be one of "
                       f"{RECURRENT_PARAMETERIZATIONS} (batch norm does not apply to its "
                       f"recurrence, paper section 5.3), got {self.parameterization!r}.")
    check_lstm_options(self.normalization, self.g_start)
    if self.data_init:
      raise ValueError("DRAW has no data-dependent init: the paper keeps the recurrent "
                       "model's initialization (sections 3 and 5.3); set data_init=False.")
    if (self.read_n == 0) != (self.write_n == 0) or min(self.read_n, self.write_n) < 0:
      raise ValueError(f"read_n and write_n must both be positive (attention) or both 0 "
                       f"(none), got {self.read_n} and {self.write_n}.")
    if self.glimpses < 1:
      raise ValueError(f"glimpses must be >= 1, got {self.glimpses}.")
    super().__post_init__()

  def setup(self):
    scan = nn.scan(_DRAWStep, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(0, nn.broadcast), length=self.glimpses)
    self.step = scan(self.image_shape, self.latent, self.encoder_units, self.decoder_units,
                     self.read_n, self.write_n, self.parameterization, self.normalization,
                     self.g_start, self.peepholes, self.keep_canvases)

  def _initial_carry(self, batch: int) -> Carry:
    zeros = lambda units: (jnp.zeros((batch, units)), jnp.zeros((batch, units)))  # noqa: E731
    return (jnp.zeros((batch, *self.image_shape)), zeros(self.encoder_units),
            zeros(self.decoder_units))

  def _run(self, eps: Array, x: Array | None) -> DRAWOutput:
    if eps.shape[0] != self.glimpses or eps.shape[-1] != self.latent:
      raise ValueError(f"eps must be [glimpses={self.glimpses}, B, latent={self.latent}], "
                       f"got {eps.shape}.")
    (canvas, _, _), (mean, log_std, canvases) = self.step(
        self._initial_carry(eps.shape[1]), eps.astype(jnp.float32), x)
    return DRAWOutput(canvas, mean, log_std, canvases)

  def __call__(self, x: Array, eps: Array) -> DRAWOutput:
    if x.shape[1:] != tuple(self.image_shape):
      raise ValueError(f"DRAW expects images [B, {self.image_shape[0]}, "
                       f"{self.image_shape[1]}], got {x.shape}.")
    return self._run(eps, x.astype(jnp.float32))

  def generate(self, eps: Array) -> DRAWOutput:
    return self._run(eps, None)
