"""The convolutional VAE of section 5.2, written against the parameterization switch.

Encoder, posterior sample and decoder in one module, so that `model.init`
is the data-dependent init of the whole VAE in ONE forward pass: every
layer of the encoder, then (on a latent drawn from the just-initialised
posterior with the 'sample' stream) every layer of the decoder.

The MNIST network of the paper (section 5.2) with the IAF paper's fill-ins
(../shared/VAE_RECIPE.md, section 7), for images [B, H, W, C] with H and W
divisible by 4:

  encoder: 3x3 conv widths[0] -> 2 ResNet blocks @widths[0] ->
    2 blocks @widths[1], the first with stride 2 -> 2 blocks @widths[2],
    the first with stride 2 -> flatten -> ELU -> dense `hidden` -> ELU ->
    dense 2 * latent (posterior mean and log-std).
  decoder: dense `hidden` -> ELU -> dense (H/4)(W/4) widths[2] -> reshape
    -> 2 blocks @widths[2] -> 2 blocks @widths[1], the first upsampling 2x
    -> 2 blocks @widths[0], the first upsampling 2x -> ELU -> 3x3 conv
    `out_channels` (the likelihood's parameters per pixel).

A ResNet block is pre-activation, `x + 0.1 * conv(ELU(conv(ELU(x))))` (the
authors' code scales the residual branch by 0.1); where the shape changes
a conv replaces the identity shortcut (IAF paper). Downsampling is a
stride-2 3x3 conv; upsampling is a 3x3 conv to 4x the channels followed by
depth-to-space (the authors' code, `graphy/nodes/conv.py`), so every layer
is a conv of the parameterization switch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

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

RESIDUAL_SCALE = 0.1  # the authors' code scales every residual branch by 0.1
POSTERIORS = ("diagonal", "iaf")
LOG_2PI = math.log(2 * math.pi)


def depth_to_space(x: Array, block: int = 2) -> Array:
  """[B, H, W, C * block^2] -> [B, H * block, W * block, C]."""
  b, h, w, c = x.shape
  c_out = c // (block * block)
  x = x.reshape(b, h, w, block, block, c_out)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * block, w * block, c_out)


class ResBlock(nn.Module):
  """Pre-activation ResNet block: `shortcut(x) + 0.1 * conv(ELU(conv(ELU(x))))`.

  resample: 'none', 'down' (stride 2) or 'up' (2x, conv to 4x channels +
  depth-to-space); with a resample or a change of width the shortcut is a
  3x3 conv of the same kind. x [B, H, W, C] -> [B, H', W', features].
  """
  features: int
  resample: str = "none"
  conv: Any = NormalizedConv

  def _resampling_conv(self, x: Array, train: bool) -> Array:
    if self.resample == "down":
      return self.conv(self.features, (3, 3), strides=(2, 2))(x, train=train)
    if self.resample == "up":
      return depth_to_space(self.conv(4 * self.features, (3, 3))(x, train=train))
    return self.conv(self.features, (3, 3))(x, train=train)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.resample not in ("none", "down", "up"):
      raise ValueError(f"resample must be 'none', 'down' or 'up', got {self.resample!r}.")
    h = self._resampling_conv(nn.elu(x), train)
    h = self.conv(self.features, (3, 3))(nn.elu(h), train=train)
    if self.resample == "none" and x.shape[-1] == self.features:
      shortcut = x
    else:
      shortcut = self._resampling_conv(x, train)
    return shortcut + RESIDUAL_SCALE * h


class VAEOutput(NamedTuple):
  """output [B, H, W, out_channels] (the likelihood's parameters); z [B, latent]
  the posterior sample; log_q [B] its log-density log q(z | x); mean and
  log_std [B, latent] of the Gaussian that starts the posterior."""
  output: Array
  z: Array
  log_q: Array
  mean: Array
  log_std: Array


def _made_degrees(latent: int, hidden: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """MADE degrees: inputs and outputs 1..latent, hidden units cycling over
  1..latent-1 (at least 1)."""
  return (tuple(range(1, latent + 1)),
          tuple(i % max(latent - 1, 1) + 1 for i in range(hidden)))


class IAFStep(nn.Module):
  """One step of inverse autoregressive flow (IAF paper, eq. 10-14, Alg. 1).

  A two-hidden-layer MADE of z [B, D] (plus the encoder's context h
  [B, C] into the first hidden layer) gives m, s [B, D], output d seeing
  only z_1..z_{d-1}; then sigma = sigmoid(s + gate_bias),
  z' = sigma z + (1 - sigma) m and log q(z') = log q(z) - sum log sigma.
  Every dense layer, masked or not, goes through `dense` (the switch).
  Returns (z', the subtracted sum log sigma [B]).
  """
  hidden: int
  gate_bias: float
  dense: Any
  head_dense: Any

  @nn.compact
  def __call__(self, z: Array, context: Array, *, train: bool) -> tuple[Array, Array]:
    latent = z.shape[-1]
    inputs, hidden = _made_degrees(latent, self.hidden)
    h = (self.dense(self.hidden, mask_degrees=(inputs, hidden, False))(z, train=train)
         + self.dense(self.hidden)(context, train=train))
    h = self.dense(self.hidden, mask_degrees=(hidden, hidden, False))(nn.elu(h), train=train)
    outputs = inputs + inputs  # m and s, each with the inputs' degrees
    m, s = jnp.split(self.head_dense(2 * latent, mask_degrees=(hidden, outputs, True))(
        nn.elu(h), train=train).astype(jnp.float32), 2, axis=-1)
    sigma = jax.nn.sigmoid(s + self.gate_bias)
    return sigma * z + (1 - sigma) * m, jnp.sum(jax.nn.log_sigmoid(s + self.gate_bias), -1)


class VAE(nn.Module):
  """The section 5.2 VAE: a diagonal Gaussian posterior, optionally refined by
  inverse autoregressive flow (`posterior='iaf'`, the paper's choice); an
  N(0, I) prior.

  `__call__(x, train)` with x [B, H, W, C] (the encoder's input, centred:
  binary pixels or [0, 1] intensities minus 0.5) draws one posterior sample
  per image from the 'sample' stream and returns a `VAEOutput`. `encode`,
  `sample_posterior` and `decode` are its parts (for the importance-weighted
  bound and for samples from the prior).

  With `posterior='iaf'` the encoder also gives a context h of
  `iaf_context` units, and `iaf_steps` IAF steps (`IAFStep`, MADE width
  `iaf_hidden`, the variable order reversed between steps) transform the
  Gaussian sample.

  Every conv and dense layer goes through `NormalizedConv` /
  `NormalizedDense` with `parameterization`. The layers whose outputs are
  distribution parameters (the posterior head and the decoder's output
  conv) start at `head_init_scale` instead of `init_scale`: the paper's
  init gives pre-activations unit std, which for a log-std means a KL of
  ~100 nats at the start; the authors' code initialises every layer to
  std 0.1. `output_log_scale`: a learned log-scale per output channel
  (param 'output_log_scale', starting at `init_log_scale`), for the
  discretized logistic likelihood.
  """
  image_shape: tuple[int, int, int] = (28, 28, 1)
  out_channels: int = 1
  widths: Sequence[int] = (16, 32, 32)
  blocks_per_stage: int = 2
  hidden: int = 450
  latent: int = 32
  parameterization: str = "wn"
  data_init: bool = True
  init_scale: float = 1.0
  head_init_scale: float = 0.1
  init_order: str = "sequential"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  conv_weight_grad: str = "xla"
  output_log_scale: bool = False
  init_log_scale: float = 0.0
  posterior: str = "diagonal"
  iaf_steps: int = 2
  iaf_hidden: int = 64
  iaf_context: int = 32
  iaf_gate_bias: float = 1.5
  dtype: Any = jnp.float32

  def __post_init__(self):
    check_parameterization(self.parameterization, folded=True)
    check_init_order(self.init_order)
    if self.posterior not in POSTERIORS:
      raise ValueError(f"posterior must be one of {POSTERIORS}, got {self.posterior!r}.")
    if len(self.widths) != 3:
      raise ValueError(f"widths must have 3 entries (one per stage), got {self.widths}.")
    height, width, _ = self.image_shape
    if height % 4 or width % 4:
      raise ValueError(f"The VAE subsamples twice: image height and width must be "
                       f"divisible by 4, got {self.image_shape}.")
    super().__post_init__()

  def _layers(self, init_scale=None):
    kwargs = dict(parameterization=self.parameterization, data_init=self.data_init,
                  init_scale=self.init_scale if init_scale is None else init_scale,
                  init_order=self.init_order, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    conv = functools.partial(NormalizedConv, conv_weight_grad=self.conv_weight_grad, **kwargs)
    return conv, functools.partial(NormalizedDense, **kwargs)

  def setup(self):
    conv, dense = self._layers()
    head_conv, head_dense = self._layers(self.head_init_scale)
    w0, w1, w2 = self.widths
    n = self.blocks_per_stage
    def stage(width, resample):
      return [ResBlock(width, resample if i == 0 else "none", conv) for i in range(n)]
    self.encoder_input = conv(w0, (3, 3))
    self.encoder_blocks = stage(w0, "none") + stage(w1, "down") + stage(w2, "down")
    self.encoder_hidden = dense(self.hidden)
    context = self.iaf_context if self.posterior == "iaf" else 0
    self.posterior_head = head_dense(2 * self.latent + context)
    if self.posterior == "iaf":
      self.flow = [IAFStep(self.iaf_hidden, self.iaf_gate_bias, dense, head_dense)
                   for _ in range(self.iaf_steps)]
    self.decoder_hidden = dense(self.hidden)
    self.decoder_input = dense(self.image_shape[0] // 4 * self.image_shape[1] // 4 * w2)
    self.decoder_blocks = stage(w2, "none") + stage(w1, "up") + stage(w0, "up")
    self.decoder_output = head_conv(self.out_channels, (3, 3))
    if self.output_log_scale:  # one log-scale per channel (IAF paper, section C.5)
      self.log_scale = self.param("output_log_scale",
                                  nn.initializers.constant(self.init_log_scale),
                                  (self.out_channels,))

  def encode(self, x: Array, *, train: bool) -> tuple[Array, Array, Array]:
    """x [B, H, W, C] -> the Gaussian's mean, log-std [B, latent] and the IAF
    context [B, iaf_context] ([B, 0] for the diagonal posterior), float32."""
    h = self.encoder_input(x.astype(self.dtype), train=train)
    for block in self.encoder_blocks:
      h = block(h, train=train)
    h = nn.elu(self.encoder_hidden(nn.elu(h.reshape(h.shape[0], -1)), train=train))
    h = self.posterior_head(h, train=train).astype(jnp.float32)
    return h[:, :self.latent], h[:, self.latent:2 * self.latent], h[:, 2 * self.latent:]

  def sample_posterior(self, mean: Array, log_std: Array, context: Array, eps: Array, *,
                train: bool) -> tuple[Array, Array]:
    """z and log q(z | x) [B] of the posterior sample with noise eps [B, latent]:
    z0 = mean + exp(log_std) eps (the reparameterization trick), then the
    IAF steps, if any."""
    z = mean + jnp.exp(log_std) * eps
    log_q = jnp.sum(-0.5 * (jnp.square(eps) + LOG_2PI) - log_std, axis=-1)
    if self.posterior == "iaf":
      for i, step in enumerate(self.flow):
        if i:
          z = z[:, ::-1]  # reverse the order between steps
        z, log_sigma = step(z, context, train=train)
        log_q = log_q - log_sigma
    return z, log_q

  def decode(self, z: Array, *, train: bool) -> Array:
    """z [B, latent] -> decoder output [B, H, W, out_channels] (float32)."""
    h = nn.elu(self.decoder_hidden(z.astype(self.dtype), train=train))
    h = self.decoder_input(h, train=train)
    height, width, _ = self.image_shape
    h = h.reshape(h.shape[0], height // 4, width // 4, self.widths[2])
    for block in self.decoder_blocks:
      h = block(h, train=train)
    return self.decoder_output(nn.elu(h), train=train).astype(jnp.float32)

  def __call__(self, x: Array, *, train: bool) -> VAEOutput:
    mean, log_std, context = self.encode(x, train=train)
    eps = jax.random.normal(self.make_rng("sample"), mean.shape, jnp.float32)
    z, log_q = self.sample_posterior(mean, log_std, context, eps, train=train)
    return VAEOutput(self.decode(z, train=train), z, log_q, mean, log_std)
