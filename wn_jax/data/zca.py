"""Pixel scaling, the covariance spectrum, and ZCA whitening (authors' `nn.ZCA`).

Pure numpy on in-memory arrays, in float64 where it matters. No file
access and no cache: `cache.load_whitened` stores what `whiten_dataset`
returns.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wn_jax.data.sources import Dataset


class ZCA(NamedTuple):
  """A fitted ZCA whitening transform, applied as `(x - mean) @ whitening`.

  Attributes:
    mean: float64 [dim], the per-feature mean of the fitting data.
    whitening: float64 [dim, dim], symmetric `U diag(1/sqrt(S + reg)) U^T`.
  """

  mean: np.ndarray
  whitening: np.ndarray


def scale_pixels(images: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to `(x - 127.5) / 128` as float32, same shape.

  This is the authors' `unpickle` scaling: values land in about [-1, 1).
  """
  return ((images.astype(np.float32) - 127.5) / 128.0).astype(np.float32)


class CovarianceSpectrum(NamedTuple):
  """The eigendecomposition of a data covariance, `sigma = U diag(S) U^T`.

  Attributes:
    mean: float64 [dim], the per-feature mean.
    eigenvalues: float64 [dim], S in ascending order, clipped at 0.
    eigenvectors: float64 [dim, dim], U; column i belongs to eigenvalue i.
  """

  mean: np.ndarray
  eigenvalues: np.ndarray
  eigenvectors: np.ndarray


def zca_input(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] -> the rows ZCA is fitted on: float32 [N, H*W*C],
  `scale_pixels` of each image flattened in HWC order."""
  return scale_pixels(images).reshape(images.shape[0], -1)


def covariance_spectrum(x: np.ndarray, *, chunk_size: int = 10_000) -> CovarianceSpectrum:
  """Mean and eigendecomposition of the covariance of `x: [num_examples, dim]`.

  The covariance is the biased (maximum-likelihood) estimate
  `sigma = (x - mean)^T (x - mean) / N`, divided by N, not N - 1, as in the
  authors' `nn.ZCA.fit`. They take `U, S` from an SVD of `sigma`; for a
  symmetric positive semi-definite matrix that is its eigendecomposition,
  which `np.linalg.eigh` computes here. Eigenvalues that round-off makes
  slightly negative are clipped to 0 (the SVD would return their absolute
  value, a difference of the order of float64 round-off).

  Everything is computed in float64; the covariance is accumulated over
  chunks of rows so that no float64 copy of `x` is made.

  Args:
    x: [num_examples, dim] float array (e.g. scaled, flattened images).
    chunk_size: rows per chunk when accumulating the covariance.

  Returns:
    CovarianceSpectrum(mean [dim], eigenvalues [dim] ascending,
    eigenvectors [dim, dim]), all float64.
  """
  if x.ndim != 2:
    raise ValueError(f"Expected x: [num_examples, dim], got {x.shape}.")
  num_examples, dim = x.shape
  mean = np.mean(x, axis=0, dtype=np.float64)
  sigma = np.zeros((dim, dim), dtype=np.float64)
  for start in range(0, num_examples, chunk_size):
    centred = x[start : start + chunk_size].astype(np.float64) - mean
    sigma += centred.T @ centred
  sigma /= num_examples
  eigenvalues, eigenvectors = np.linalg.eigh(sigma)
  return CovarianceSpectrum(mean, np.maximum(eigenvalues, 0.0), eigenvectors)


def zca_from_spectrum(spectrum: CovarianceSpectrum, regularization: float) -> ZCA:
  """`whitening = U diag(1 / sqrt(S + reg)) U^T` (the authors' `nn.ZCA`)."""
  gains = 1.0 / np.sqrt(spectrum.eigenvalues + regularization)
  whitening = (spectrum.eigenvectors * gains) @ spectrum.eigenvectors.T
  return ZCA(mean=spectrum.mean, whitening=whitening)


def fit_zca(x: np.ndarray, regularization: float, *, chunk_size: int = 10_000) -> ZCA:
  """Fits ZCA whitening to `x: [num_examples, dim]`, as in the authors' code.

  Matches `nn.ZCA.fit` in openai/weightnorm: `covariance_spectrum` gives
  `sigma = U diag(S) U^T` (biased covariance, float64) and
  `whitening = U diag(1 / sqrt(S + reg)) U^T`.

  Args:
    x: [num_examples, dim] float array (e.g. scaled, flattened images).
    regularization: added to every eigenvalue; the recipe uses 1e-5.
    chunk_size: rows per chunk when accumulating the covariance.

  Returns:
    ZCA(mean float64 [dim], whitening float64 [dim, dim]).
  """
  if x.ndim != 2:
    raise ValueError(f"fit_zca expects [num_examples, dim], got {x.shape}.")
  return zca_from_spectrum(covariance_spectrum(x, chunk_size=chunk_size), regularization)


def apply_zca(zca: ZCA, x: np.ndarray, *, chunk_size: int = 10_000) -> np.ndarray:
  """Whitens `x: [num_examples, dim]` as `(x - mean) @ whitening`.

  Computed in float64 chunk by chunk (bounded memory) and returned as
  float32 [num_examples, dim].
  """
  if x.ndim != 2 or x.shape[1] != zca.mean.shape[0]:
    raise ValueError(f"apply_zca expects [num_examples, {zca.mean.shape[0]}], got {x.shape}.")
  out = np.empty(x.shape, dtype=np.float32)
  for start in range(0, x.shape[0], chunk_size):
    chunk = x[start : start + chunk_size].astype(np.float64) - zca.mean
    out[start : start + chunk_size] = chunk @ zca.whitening
  return out


def whiten_dataset(dataset: Dataset, regularization: float) -> tuple[np.ndarray, np.ndarray]:
  """Scales pixels, fits ZCA on the whole training set, whitens both splits.

  Args:
    dataset: images uint8 [N, H, W, C] (train) and [M, H, W, C] (test).
    regularization: ZCA eigenvalue regularisation (recipe: 1e-5).

  Returns:
    train_x: float32 [N, H, W, C] and test_x: float32 [M, H, W, C], each
    image flattened to H*W*C, whitened, and reshaped back.
  """
  train_rows = zca_input(dataset.train_images)
  zca = fit_zca(train_rows, regularization)
  train_x = apply_zca(zca, train_rows)
  test_x = apply_zca(zca, zca_input(dataset.test_images))
  return (train_x.reshape(dataset.train_images.shape),
          test_x.reshape(dataset.test_images.shape))
