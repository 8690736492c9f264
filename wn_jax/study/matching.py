"""A lossy copy of an image data set matched to its original, and their
pixel distance (the first two steps of `wn_jax.study.compare`).

Every copy image is matched to the nearest original of its class (mean
squared pixel difference over all H*W*3 values); the match must be a
bijection (`check_bijection` names the originals matched twice or never).
`class_order_match` is the hypothesis that the copy keeps the original
order within each class; `match` checks it against the nearest-neighbour
match. `pixel_distance` gives the mean absolute difference and PSNR of
the matched pairs per R, G, B channel and per Y, Cb, Cr plane.

Holds only matching and distances: no ZCA, no files, no command line.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from wn_jax.study import spectrum

# ---------------------------------------------------------------------------
# Matching.


class Nearest(NamedTuple):
  """The nearest candidate of each query image.

  Attributes:
    index: int64 [num_queries], index of the nearest candidate.
    msd: float64 [num_queries], mean squared pixel difference to it (uint8
      scale, over all H*W*C values).
    second_msd: float64 [num_queries], the same to the next nearest
      candidate (inf if there is only one).
  """

  index: np.ndarray
  msd: np.ndarray
  second_msd: np.ndarray


def nearest(queries: np.ndarray, candidates: np.ndarray, *, chunk_size: int = 1000) -> Nearest:
  """Nearest candidate of each query by mean squared pixel difference.

  Args:
    queries: uint8 [num_queries, H, W, C].
    candidates: uint8 [num_candidates, H, W, C].
    chunk_size: queries per distance block ([chunk_size, num_candidates]).

  Returns:
    Nearest, with the distances computed as |q|^2 + |x|^2 - 2 q.x in
    float32 on pixels centred at 128 (absolute error ~1e-3 in the msd).
  """
  dim = int(np.prod(queries.shape[1:]))
  if int(np.prod(candidates.shape[1:])) != dim:
    raise ValueError(f"queries {queries.shape} and candidates {candidates.shape} differ in size.")
  x = candidates.reshape(len(candidates), dim).astype(np.float32) - 128.0
  x_norms = np.einsum("ij,ij->i", x, x, dtype=np.float64)
  index = np.empty(len(queries), dtype=np.int64)
  msd = np.empty(len(queries))
  second = np.full(len(queries), np.inf)
  for start in range(0, len(queries), chunk_size):
    q = queries[start : start + chunk_size].reshape(-1, dim).astype(np.float32) - 128.0
    q_norms = np.einsum("ij,ij->i", q, q, dtype=np.float64)
    distances = (q_norms[:, None] + x_norms[None, :] - 2.0 * (q @ x.T)) / dim
    rows = np.arange(len(q))
    best = np.argmin(distances, axis=1)
    index[start : start + len(q)] = best
    msd[start : start + len(q)] = distances[rows, best]
    if distances.shape[1] > 1:
      distances[rows, best] = np.inf
      second[start : start + len(q)] = distances.min(axis=1)
  return Nearest(index, np.maximum(msd, 0.0), np.maximum(second, 0.0))


def nearest_in_class(
  copy_images: np.ndarray,
  copy_labels: np.ndarray,
  original_images: np.ndarray,
  original_labels: np.ndarray,
  *,
  chunk_size: int = 1000,
) -> Nearest:
  """`nearest` restricted to originals of the copy image's own class.

  Args:
    copy_images: uint8 [num_copy, H, W, C]; copy_labels: int [num_copy].
    original_images: uint8 [num_original, H, W, C]; original_labels: int
      [num_original].

  Returns:
    Nearest, with `index` into `original_images`.

  Raises:
    ValueError: a copy class has no originals.
  """
  index = np.empty(len(copy_images), dtype=np.int64)
  msd = np.empty(len(copy_images))
  second = np.empty(len(copy_images))
  for label in np.unique(copy_labels):
    queries = np.flatnonzero(copy_labels == label)
    candidates = np.flatnonzero(original_labels == label)
    if not len(candidates):
      raise ValueError(f"Class {label} has {len(queries)} copy images but no original.")
    found = nearest(copy_images[queries], original_images[candidates], chunk_size=chunk_size)
    index[queries] = candidates[found.index]
    msd[queries] = found.msd
    second[queries] = found.second_msd
  return Nearest(index, msd, second)


def check_bijection(index: np.ndarray, num_originals: int) -> None:
  """Raises ValueError unless `index: [num_copy]` uses every original once.

  The message names the originals matched twice (with their copy images)
  and those matched by no copy image.
  """
  counts = np.bincount(index, minlength=num_originals)
  twice = np.flatnonzero(counts > 1)
  never = np.flatnonzero(counts == 0)
  if len(index) == num_originals and not len(twice):
    return
  problems = [f"{len(index)} copy images for {num_originals} originals"]
  if len(twice):
    pairs = [f"original {i} <- copy {np.flatnonzero(index == i).tolist()}" for i in twice[:5]]
    problems.append(f"{len(twice)} originals matched more than once ({'; '.join(pairs)}"
                    + (", ..." if len(twice) > 5 else "") + ")")
  if len(never):
    problems.append(f"{len(never)} originals matched by no copy image "
                    f"({never[:10].tolist()}{', ...' if len(never) > 10 else ''})")
  raise ValueError("The copy does not match the original one to one: " + "; ".join(problems)
                   + ". A copy image missing, duplicated, or not from this original?")


def class_order_match(copy_labels: np.ndarray, original_labels: np.ndarray) -> np.ndarray:
  """The within-class order hypothesis: copy image j -> original index.

  The k-th copy image of class c (in the copy's order) is taken to be the
  k-th image of class c in the original order.

  Args:
    copy_labels: int [num_copy]; original_labels: int [num_original].

  Returns:
    int64 [num_copy], indices into the originals.

  Raises:
    ValueError: a class has different counts in the copy and the original.
  """
  index = np.empty(len(copy_labels), dtype=np.int64)
  for label in np.union1d(copy_labels, original_labels):
    in_copy = np.flatnonzero(copy_labels == label)
    in_original = np.flatnonzero(original_labels == label)
    if len(in_copy) != len(in_original):
      raise ValueError(f"Class {label}: {len(in_copy)} copy images but {len(in_original)} "
                       "originals; the within-class order cannot match them.")
    index[in_copy] = in_original
  return index


class MatchReport(NamedTuple):
  """How well the matched pairs are separated from every other candidate.

  Attributes:
    num_images: matched copy images (every one matched once: a bijection).
    same_as_class_order: how many matches equal `class_order_match`
      (-1 where class counts differ).
    mean_abs_mean / mean_abs_max: mean and largest per-image mean absolute
      pixel difference of the matched pairs (uint8 scale).
    rms_max: the largest per-image RMS difference of a matched pair.
    other_rms_min: the smallest RMS difference of any copy image to an
      original of its class other than its match.
    ratio_min: the smallest, over copy images, of (RMS to the nearest other
      original) / (RMS to its match).
    sample_size / sample_nearest_is_match: the random sample checked against
      the originals of every class, and how many of it have their match as
      the nearest of all originals.
  """

  num_images: int
  same_as_class_order: int
  mean_abs_mean: float
  mean_abs_max: float
  rms_max: float
  other_rms_min: float
  ratio_min: float
  sample_size: int
  sample_nearest_is_match: int


def per_image_mean_abs(copy_images: np.ndarray, original_images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] twice -> float64 [N], mean |copy - original| per image."""
  diff = copy_images.astype(np.int16) - original_images.astype(np.int16)
  return np.abs(diff).reshape(len(diff), -1).mean(axis=1)


def match(
  copy_images: np.ndarray,
  copy_labels: np.ndarray,
  original_images: np.ndarray,
  original_labels: np.ndarray,
  *,
  sample_size: int = 0,
  seed: int = 0,
) -> tuple[np.ndarray, MatchReport]:
  """Matches every copy image to its original (see the module doc, step 1).

  Args:
    copy_images: uint8 [N, H, W, C]; copy_labels: int [N].
    original_images: uint8 [N, H, W, C]; original_labels: int [N].
    sample_size: copy images (drawn with `seed`) whose nearest original is
      also searched among all classes; 0 skips this check.

  Returns:
    index: int64 [N], copy image j is the encoding of original index[j].
    report: MatchReport.

  Raises:
    ValueError: the nearest originals are not a bijection.
  """
  found = nearest_in_class(copy_images, copy_labels, original_images, original_labels)
  check_bijection(found.index, len(original_images))
  try:
    same = int(np.sum(class_order_match(copy_labels, original_labels) == found.index))
  except ValueError:
    same = -1
  mean_abs = per_image_mean_abs(copy_images, original_images[found.index])
  sample_size = min(sample_size, len(copy_images))
  agree = 0
  if sample_size:
    sample = np.sort(np.random.default_rng(seed).choice(len(copy_images), sample_size,
                                                         replace=False))
    overall = nearest(copy_images[sample], original_images)
    agree = int(np.sum(overall.index == found.index[sample]))
  rms, other_rms = np.sqrt(found.msd), np.sqrt(found.second_msd)
  with np.errstate(divide="ignore"):
    ratio = other_rms / rms
  return found.index, MatchReport(
    num_images=len(copy_images),
    same_as_class_order=same,
    mean_abs_mean=float(mean_abs.mean()),
    mean_abs_max=float(mean_abs.max()),
    rms_max=float(rms.max()),
    other_rms_min=float(other_rms.min()),
    ratio_min=float(ratio.min()),
    sample_size=sample_size,
    sample_nearest_is_match=agree,
  )


# ---------------------------------------------------------------------------
# Pixel distance.


class PixelDistance(NamedTuple):
  """Distance of matched images (uint8 scale).

  Attributes:
    num_images: images compared.
    mean_abs: mean |copy - original| over all values.
    psnr_db: 10 log10(255^2 / MSE) over all values; inf if identical.
    channel_psnr_db: {'R', 'G', 'B', 'Y', 'Cb', 'Cr': PSNR of that plane}
      (Y, Cb, Cr: JPEG's colour transform of both, unrounded).
  """

  num_images: int
  mean_abs: float
  psnr_db: float
  channel_psnr_db: dict[str, float]


def psnr_db(mse: float) -> float:
  """10 log10(255^2 / mse), inf for mse 0."""
  return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def pixel_distance(copy_images: np.ndarray, original_images: np.ndarray,
                   *, chunk_size: int = 10_000) -> PixelDistance:
  """PSNR and mean absolute difference of `copy_images` against
  `original_images`, both uint8 [N, H, W, 3], pair by pair."""
  sums = np.zeros(7)  # |d|, then squared d of R, G, B, Y, Cb, Cr
  for start in range(0, len(copy_images), chunk_size):
    c = copy_images[start : start + chunk_size]
    o = original_images[start : start + chunk_size]
    d = c.astype(np.float64) - o
    sums[0] += np.abs(d).sum()
    sums[1:4] += (d * d).sum(axis=(0, 1, 2))
    dy = spectrum.rgb_to_ycbcr(c).astype(np.float64) - spectrum.rgb_to_ycbcr(o)
    sums[4:7] += (dy * dy).sum(axis=(0, 1, 2))
  per_plane = copy_images[..., 0].size
  names = ("R", "G", "B", "Y", "Cb", "Cr")
  return PixelDistance(
    num_images=len(copy_images),
    mean_abs=float(sums[0] / copy_images.size),
    psnr_db=psnr_db(float(sums[1:4].sum() / copy_images.size)),
    channel_psnr_db={n: psnr_db(float(s / per_plane)) for n, s in zip(names, sums[1:])},
  )
