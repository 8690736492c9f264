r"""How much of a lossy copy's ZCA-whitened variance is its error, per eigen-direction.

The third step of `python -m wn_jax.study.compare` (after `wn_jax.study.matching` pairs
each copy image with its original), on the matched images:

Pixels are scaled as for training (`zca.zca_input`: `(x - 127.5)/128`,
flattened) into rows `o` (original) and `c` (copy, in matched order); `d = c - o` is the
copy's error. For a unit direction `u` (the eigenvectors of the
original's training covariance, the ZCA that `fit_zca` fits on the
original; or those of the copy's own covariance):

    signal variance  lam = var(u.o)        copy variance  v = var(u.c)
    error variance   e   = var(u.d)        cross          k = cov(u.c, u.o)

The copy's component splits into a multiple of the original's component
in the same direction plus a residue uncorrelated with it,
`u.c = (k/lam) u.o + r`, and the **residue share** of the direction is

    share = var(r) / var(u.c) = 1 - k^2 / (lam v)    (in [0, 1]).

`e / v` is not used as the share: where JPEG removes a component,
the error is anti-correlated with the signal (`d ~ -o`), `e` exceeds `v`
and `e / v` exceeds 1; and a component that the encoder only attenuates
(`c = a o`) counts as error in `e` though whitening scales it back.
The share does not depend on the whitening gain, which multiplies the
whole direction; the whitened copy's variance in the direction is
`w = g^2 v`, with `g = 1/sqrt(S + reg)` and S the eigenvalue of the
covariance the ZCA was fitted on, and the share of the whole whitened
copy's variance that is residue is `sum(w share) / sum(w)`.

Because the signal is the original's component in the *same* direction,
content that the encoder moves between directions (blocking, ringing)
counts as residue where it lands. `linear_share` is the stricter
version: the part of `var(u.c)` that no linear function of the whole
original image predicts, `u^T (C_cc - C_co C_oo^-1 C_oc) u / v`, which
is never larger than `share` (before the correction that follows).
Fitted in-sample with one coefficient per pixel (dim of them), that
regression also fits dim / N of pure noise (6% at N = 50,000,
dim = 3,072); given the number of examples, the residual is corrected
by degrees of freedom, (N - 1) / (N - dim - 1), as adjusted R^2 is.

Holds the statistics only: no file reading, matching, table or plot
(`wn_jax.study.compare`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wn_jax.data import zca

REGULARIZATIONS = (1e-5, 1e-3, 1e-2)
# Rank ranges (1-based, inclusive) of the summary table, largest eigenvalue first.
RANK_RANGES = ((1, 100), (101, 500), (501, 1000), (1001, 1500), (1501, 2000),
               (2001, 2500), (2501, 3072))


def cross_covariance(a: np.ndarray, b: np.ndarray, *, chunk_size: int = 10_000) -> np.ndarray:
  """Biased cross-covariance `(a - mean a)^T (b - mean b) / N` in float64.

  Args:
    a, b: [N, dim] float rows, row i of `a` paired with row i of `b`.

  Returns:
    float64 [dim, dim]; entry (p, q) is cov(a[:, p], b[:, q]).
  """
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"Expected two [N, dim] arrays of one shape, got {a.shape} and {b.shape}.")
  mean_a = np.mean(a, axis=0, dtype=np.float64)
  mean_b = np.mean(b, axis=0, dtype=np.float64)
  total = np.zeros((a.shape[1], b.shape[1]))
  for start in range(0, len(a), chunk_size):
    total += ((a[start : start + chunk_size] - mean_a).T
              @ (b[start : start + chunk_size] - mean_b))
  return total / len(a)


def covariance_from_spectrum(s: zca.CovarianceSpectrum) -> np.ndarray:
  """`U diag(S) U^T`, float64 [dim, dim]: the covariance that `s` decomposes."""
  return (s.eigenvectors * s.eigenvalues) @ s.eigenvectors.T


class DirectionStatistics(NamedTuple):
  """Variances of the original, the copy and the error along directions.

  All float64 [num_directions], one entry per column of the basis.

  Attributes:
    original: lam = u^T C_oo u.
    copy: v = u^T C_cc u.
    cross: k = u^T C_co u, cov(u.c, u.o).
    error: e = v - 2 k + lam = var(u.(c - o)).
    share: residue share 1 - k^2 / (lam v) (module doc); 1 where lam = 0
      < v, 0 where v = 0.
    linear_share: u^T (C_cc - C_co C_oo^-1 C_oc) u / v, the part of v that
      no linear function of the whole original predicts (times
      (N - 1) / (N - rank(C_oo) - 1) if the number of examples N is given).
  """

  original: np.ndarray
  copy: np.ndarray
  cross: np.ndarray
  error: np.ndarray
  share: np.ndarray
  linear_share: np.ndarray


def direction_statistics(
  basis: np.ndarray,
  original: zca.CovarianceSpectrum,
  copy_covariance: np.ndarray,
  copy_original_covariance: np.ndarray,
  num_examples: int | None = None,
) -> DirectionStatistics:
  """DirectionStatistics for the unit columns of `basis`.

  Args:
    basis: float64 [dim, num_directions], orthonormal columns u.
    original: the original's CovarianceSpectrum (C_oo = U diag(S) U^T).
    copy_covariance: float64 [dim, dim], C_cc.
    copy_original_covariance: float64 [dim, dim], C_co =
      cov(copy rows, original rows) as `cross_covariance(c, o)` gives it.
    num_examples: N, the rows the covariances were computed on; corrects
      `linear_share` for the regression's degrees of freedom. None: no
      correction.
  """

  def quadratic(matrix):  # u_i^T M u_i for every column u_i
    return np.einsum("pi,pi->i", basis, matrix @ basis)

  lam = quadratic(covariance_from_spectrum(original))
  v = quadratic(copy_covariance)
  k = quadratic(copy_original_covariance)
  with np.errstate(divide="ignore", invalid="ignore"):
    # No original variance along u: all of the copy's variance there is residue.
    share = np.where(v > 0, np.where(lam > 0, 1.0 - k * k / (lam * v), 1.0), 0.0)
    # C_co C_oo^-1 C_oc through the original's eigenbasis; directions with
    # S = 0 carry no original content to predict from.
    inverse = np.where(original.eigenvalues > 0, 1.0 / original.eigenvalues, 0.0)
    projected = basis.T @ (copy_original_covariance @ original.eigenvectors)
    predicted = np.einsum("ij,j,ij->i", projected, inverse, projected)
    linear_share = np.where(v > 0, 1.0 - predicted / v, 0.0)
  if num_examples is not None:
    predictors = int(np.sum(original.eigenvalues > 0))
    linear_share = linear_share * (num_examples - 1) / (num_examples - predictors - 1)
  return DirectionStatistics(lam, v, k, lam - 2 * k + v, np.clip(share, 0.0, 1.0),
                             np.clip(linear_share, 0.0, 1.0))


class WhitenedShare(NamedTuple):
  """The whitened copy's variance and its residue part, by rank.

  All arrays float64 [dim], rank 1 (largest eigenvalue) first.

  Attributes:
    eigenvalues: S of the covariance the ZCA was fitted on.
    gain2: g^2 = 1 / (S + reg).
    stats: the DirectionStatistics, reordered by rank.
    whitened: g^2 v, the whitened copy's variance per direction.
    residue: whitened * share.
    total_share: sum(residue) / sum(whitened).
    total_linear_share: the same with stats.linear_share.
  """

  eigenvalues: np.ndarray
  gain2: np.ndarray
  stats: DirectionStatistics
  whitened: np.ndarray
  residue: np.ndarray
  total_share: float
  total_linear_share: float


def whitened_share(eigenvalues: np.ndarray, stats: DirectionStatistics,
                   regularization: float) -> WhitenedShare:
  """Residue share of the copy's whitened variance under the ZCA
  `U diag(1/sqrt(S + reg)) U^T` whose U are the directions of `stats`.

  Args:
    eigenvalues: float64 [dim], S, one per direction of `stats` (any order,
      e.g. ascending as `covariance_spectrum` returns them).
    stats: DirectionStatistics of those directions.
    regularization: reg.
  """
  order = np.argsort(eigenvalues, kind="stable")[::-1]
  ranked = DirectionStatistics(*(field[order] for field in stats))
  gain2 = 1.0 / (eigenvalues[order] + regularization)
  whitened = gain2 * ranked.copy
  residue = whitened * ranked.share
  return WhitenedShare(
    eigenvalues=eigenvalues[order], gain2=gain2, stats=ranked, whitened=whitened,
    residue=residue, total_share=float(residue.sum() / whitened.sum()),
    total_linear_share=float((whitened * ranked.linear_share).sum() / whitened.sum()))


def rank_table(share: WhitenedShare, rank_ranges=RANK_RANGES) -> list[dict]:
  """One row per rank range (1-based, inclusive; cut at dim).

  Each row: ranks, eigenvalue_max / eigenvalue_min of the range,
  whitened_share (its part of the whitened copy's variance), residue_share
  (the residue's part of the range's whitened variance), linear_share (the
  same with linear_share), residue_of_total (the range's residue as a part
  of the whole whitened variance), error_over_copy (sum g^2 e / sum g^2 v,
  which exceeds 1 where the error is anti-correlated with the signal).
  """
  dim = len(share.whitened)
  total = share.whitened.sum()
  rows = []
  for first, last in rank_ranges:
    if first > dim:
      continue
    part = slice(first - 1, min(last, dim))
    w = share.whitened[part]
    rows.append(dict(
      ranks=f"{first}-{min(last, dim)}",
      eigenvalue_max=float(share.eigenvalues[part][0]),
      eigenvalue_min=float(share.eigenvalues[part][-1]),
      whitened_share=float(w.sum() / total),
      residue_share=float(share.residue[part].sum() / w.sum()),
      linear_share=float((w * share.stats.linear_share[part]).sum() / w.sum()),
      residue_of_total=float(share.residue[part].sum() / total),
      error_over_copy=float((share.gain2[part] * share.stats.error[part]).sum() / w.sum()),
    ))
  return rows


def error_shares(
  copy_images: np.ndarray,
  original_images: np.ndarray,
  regularizations=REGULARIZATIONS,
) -> dict[str, dict]:
  """Residue shares under the original's ZCA and under the copy's own.

  Args:
    copy_images: uint8 [N, H, W, C], row j the encoding of original j.
    original_images: uint8 [N, H, W, C], e.g. the training split.
    regularizations: ZCA regularisations to report the totals for.

  Returns:
    {'original': ..., 'copy': ...}, the ZCA fitted on that set's training
    covariance (as `fit_zca`), each a dict with `spectrum`
    (CovarianceSpectrum), `stats` (DirectionStatistics along its
    eigenvectors) and `shares` ({reg: WhitenedShare}).
  """
  o = zca.zca_input(original_images)
  c = zca.zca_input(copy_images)
  spectra = {"original": zca.covariance_spectrum(o),
             "copy": zca.covariance_spectrum(c)}
  copy_original = cross_covariance(c, o)
  del o, c
  copy_covariance = covariance_from_spectrum(spectra["copy"])
  result = {}
  for name, fitted in spectra.items():
    stats = direction_statistics(fitted.eigenvectors, spectra["original"], copy_covariance,
                                 copy_original, num_examples=len(original_images))
    result[name] = dict(spectrum=fitted, stats=stats,
                        shares={reg: whitened_share(fitted.eigenvalues, stats, reg)
                                for reg in regularizations})
  return result
