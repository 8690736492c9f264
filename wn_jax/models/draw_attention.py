"""DRAW's selective attention (Gregor et al. 2015, section 3.2), as in the
reference code (jbornschein/draw, `draw/attention.py`) that the paper's
section 5.3 trained.

An N x N grid of Gaussian filters over an H x W image, set by five numbers
per image (from a linear map of the decoder state):

    g_Y = (g~_Y + 1)/2 H,  g_X = (g~_X + 1)/2 W        the grid's centre
    delta = (max(H, W) - 1)/(N - 1) exp(log delta~)     the stride
    sigma^2 = exp(log sigma^2),  gamma = exp(log gamma)  width, intensity
    mu_i = g + (i - N/2 + 0.5) delta,  i = 0..N-1       the filter centres
    F[i, a] = exp(-(a - mu_i)^2 / (2 sigma^2)) / (sum_a' ... + 1e-4)

read(x) = gamma F_Y x F_X^T [N, N]; write(w) = (1/gamma) F_Y^T w F_X [H, W].
(The DRAW paper's eq. 22 scales the centre by (H + 1)/2; the code by H/2,
which is what was trained.) Pure functions of arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

FILTER_EPSILON = 1e-4  # added to each filter's sum before normalising (the code's)


class Attention(NamedTuple):
  """The grid of each image: centre g_y, g_x, stride delta, variance
  sigma2, intensity gamma, each [B]."""
  center_y: Array
  center_x: Array
  delta: Array
  sigma2: Array
  gamma: Array


def attention_from_linear(params: Array, height: int, width: int, n: int) -> Attention:
  """The grid from the linear map's 5 outputs [B, 5]: (g~_Y, g~_X,
  log delta~, log sigma^2, log gamma), in the reference code's order."""
  center_y, center_x, log_delta, log_sigma2, log_gamma = jnp.moveaxis(params, -1, 0)
  return Attention(center_y=(center_y + 1.0) / 2.0 * height,
                   center_x=(center_x + 1.0) / 2.0 * width,
                   delta=(max(height, width) - 1) / max(n - 1, 1) * jnp.exp(log_delta),
                   sigma2=jnp.exp(log_sigma2), gamma=jnp.exp(log_gamma))


def filterbank(center: Array, delta: Array, sigma2: Array, n: int, size: int) -> Array:
  """F [B, n, size]: n Gaussian filters along one axis of `size` pixels."""
  offsets = jnp.arange(n, dtype=jnp.float32) - n / 2 + 0.5
  mu = center[:, None] + offsets[None, :] * delta[:, None]  # [B, n]
  pixels = jnp.arange(size, dtype=jnp.float32)
  f = jnp.exp(-jnp.square(pixels[None, None, :] - mu[:, :, None]) / (2 * sigma2[:, None, None]))
  return f / (jnp.sum(f, axis=-1, keepdims=True) + FILTER_EPSILON)


def filterbanks(attention: Attention, n: int, height: int, width: int) -> tuple[Array, Array]:
  """(F_Y [B, n, height], F_X [B, n, width])."""
  return (filterbank(attention.center_y, attention.delta, attention.sigma2, n, height),
          filterbank(attention.center_x, attention.delta, attention.sigma2, n, width))


def read(images: Array, attention: Attention, n: int) -> Array:
  """gamma F_Y x F_X^T of images [B, H, W]: glimpses [B, n, n]."""
  f_y, f_x = filterbanks(attention, n, images.shape[1], images.shape[2])
  glimpse = jnp.einsum("bih,bhw,bjw->bij", f_y, images, f_x)
  return attention.gamma[:, None, None] * glimpse


def write(patches: Array, attention: Attention, height: int, width: int) -> Array:
  """(1/gamma) F_Y^T w F_X of patches [B, n, n]: canvas updates [B, H, W]."""
  n = patches.shape[1]
  f_y, f_x = filterbanks(attention, n, height, width)
  canvas = jnp.einsum("bih,bij,bjw->bhw", f_y, patches, f_x)
  return canvas / attention.gamma[:, None, None]
