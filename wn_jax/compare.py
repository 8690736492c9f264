r"""A lossy copy of an image data set against its original: matching, PSNR, and
how much of what ZCA whitening passes on is the copy's error.

Three steps; the first two are in `wn_jax.matching`, the third below:

1. **Matching.** Every copy image is matched to the nearest original of its
   class (mean squared pixel difference over all H*W*3 values); the match
   must be a bijection, or the command stops and names the originals that
   were matched twice or never. The match is then compared with the
   hypothesis that the copy keeps the original order within each class
   (the copy's k-th file of class c is the k-th image of class c in the
   original files), and on a random sample every copy image's nearest
   original among *all* classes is checked to be its match.
2. **Distance.** Mean absolute difference and PSNR of the matched pairs, per
   split, per R, G, B channel and per Y, Cb, Cr plane (JPEG's colour
   transform).
3. **Error share per eigen-direction.** Pixels are scaled as for training
   (`zca.zca_input`: `(x - 127.5)/128`, flattened) into rows
   `o` (original) and `c` (copy, in matched order); `d = c - o` is the
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

  python -m wn_jax.compare /data/cifar10-jpeg /data/cifar-10-batches-py \
      --original-source cifar10_python --plot docs/jpeg_error_share.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import NamedTuple

import ml_collections
import numpy as np

from wn_jax import matching, spectrum
from wn_jax.data import sources, zca

SPLITS = ("train", "test")
REGULARIZATIONS = (1e-5, 1e-3, 1e-2)
# Rank ranges (1-based, inclusive) of the summary table, largest eigenvalue first.
RANK_RANGES = ((1, 100), (101, 500), (501, 1000), (1001, 1500), (1501, 2000),
               (2001, 2500), (2501, 3072))


# ---------------------------------------------------------------------------
# Error share per eigen-direction.


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


# ---------------------------------------------------------------------------
# The whole comparison.


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


def _load(path: str, source: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  config = ml_collections.ConfigDict(dict(source=source, name="", folder=path, tfds_data_dir="",
                                          train_split=split, test_split=split))
  dataset = sources.load_dataset(config)
  return dataset.train_images, dataset.train_labels, dataset.class_names


def markdown_report(matches: dict[str, matching.MatchReport], distances: dict[str, matching.PixelDistance],
                    shares: dict[str, dict] | None, regularization: float) -> str:
  """The printed tables: matching, pixel distance, error share by rank."""
  lines = [("| split | images | same as within-class order | mean abs diff, mean / max per image "
            "| largest RMS diff of a match | smallest RMS diff to another original of the class "
            "| smallest ratio other / match | sample: nearest of all classes is the match |"),
           "| --- " * 8 + "|"]
  for split, m in matches.items():
    lines.append(f"| {split} | {m.num_images} | {m.same_as_class_order} | "
                 f"{m.mean_abs_mean:.3f} / {m.mean_abs_max:.3f} | {m.rms_max:.3f} | "
                 f"{m.other_rms_min:.3f} | {m.ratio_min:.2f} | "
                 f"{m.sample_nearest_is_match} of {m.sample_size} |")
  names = ("R", "G", "B", "Y", "Cb", "Cr")
  lines += ["", "| split | images | mean abs diff | PSNR (dB) | "
            + " | ".join(f"PSNR {n}" for n in names) + " |", "| --- " * (4 + len(names)) + "|"]
  for split, d in distances.items():
    lines.append(f"| {split} | {d.num_images} | {d.mean_abs:.3f} | {d.psnr_db:.2f} | "
                 + " | ".join(f"{d.channel_psnr_db[n]:.2f}" for n in names) + " |")
  if shares:
    lines += ["", ("| ZCA fitted on | reg | whitened variance that is residue | "
                   "... not linearly predictable from the original |"), "| --- " * 4 + "|"]
    for name, r in shares.items():
      for reg, s in r["shares"].items():
        lines.append(f"| {name} | {reg:g} | {s.total_share:.1%} | {s.total_linear_share:.1%} |")
    for name, r in shares.items():
      lines += ["", (f"ZCA fitted on the {name}, reg {regularization:g}, its eigen-directions "
                     "by rank:"), "",
                ("| ranks | eigenvalues | share of the whitened variance | residue share "
                 "| ... not linearly predictable | residue, share of the total "
                 "| sum g^2 e / sum g^2 v |"),
                "| --- " * 7 + "|"]
      for row in rank_table(r["shares"][regularization]):
        lines.append(f"| {row['ranks']} | {row['eigenvalue_max']:.3g} .. "
                     f"{row['eigenvalue_min']:.3g} | {row['whitened_share']:.1%} | "
                     f"{row['residue_share']:.1%} | {row['linear_share']:.1%} | "
                     f"{row['residue_of_total']:.1%} | {row['error_over_copy']:.2f} |")
  return "\n".join(lines)


def plot(shares: dict[str, dict], regularization: float, path: str) -> None:
  """Spectra, residue share per direction and its cumulative sum, vs rank."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
  on_original = shares["original"]["shares"][regularization]
  on_copy = shares["copy"]["shares"][regularization]
  rank = np.arange(1, len(on_original.whitened) + 1)
  ax = axes[0]
  ax.loglog(rank, on_original.eigenvalues, "k-", label="original: eigenvalue lam")
  ax.loglog(rank, on_copy.eigenvalues, "C0-", label="copy: its own eigenvalue")
  ax.loglog(rank, on_original.stats.copy, "C2-", lw=0.8, label="copy along the original's u")
  ax.loglog(rank, on_original.stats.error, "C3-", lw=1,
            label="error (copy - original) along the original's u")
  ax.axhline(regularization, color="C4", lw=0.8, label=f"reg {regularization:g}")
  ax.axhline(spectrum.ROUNDING_NOISE_VARIANCE, color="gray", lw=0.8, ls="--",
             label="uint8 rounding noise")
  ax.set(xlabel="rank (largest eigenvalue first)", ylabel="variance",
         title="variance per eigen-direction, (x - 127.5) / 128")
  ax.legend(fontsize=7)
  ax = axes[1]
  for s, style, name in ((on_original, "k", "original's directions"),
                         (on_copy, "C0", "copy's own directions")):
    ax.semilogx(rank, s.stats.share, style, lw=0.6, alpha=0.6, label=f"residue share, {name}")
    ax.semilogx(rank, s.stats.linear_share, style, ls=":", lw=0.8,
                label=f"not linearly predictable, {name}")
  ax.set(xlabel="rank", ylabel="share of the copy's variance", ylim=(-0.02, 1.02),
         title="residue share 1 - k^2/(lam v) per direction")
  ax.legend(fontsize=7)
  ax = axes[2]
  for s, style, name in ((on_original, "k", "ZCA of the original"),
                         (on_copy, "C0", "ZCA of the copy")):
    total = s.whitened.sum()
    ax.plot(rank, np.cumsum(s.whitened) / total, style, ls="--", lw=1,
            label=f"whitened variance, {name}")
    ax.plot(rank, np.cumsum(s.residue) / total, style,
            label=f"residue: {s.total_share:.1%} of it, {name}")
  ax.set(xlabel="rank", ylabel="cumulative share of the whitened copy's variance",
         title=f"what the network sees after ZCA (reg {regularization:g})", ylim=(0, 1.02))
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _json_ready(matches, distances, shares) -> dict:
  out = {"matches": {k: m._asdict() for k, m in matches.items()},
         "distances": {k: d._asdict() for k, d in distances.items()}, "shares": {}}
  for name, r in (shares or {}).items():
    out["shares"][name] = {
      f"{reg:g}": {"total_share": s.total_share, "total_linear_share": s.total_linear_share,
                   "rank_table": rank_table(s)}
      for reg, s in r["shares"].items()}
    first = next(iter(r["shares"].values()))
    out["shares"][name]["by_rank"] = {
      "eigenvalues": first.eigenvalues.tolist(),
      **{field: getattr(first.stats, field).tolist() for field in DirectionStatistics._fields}}
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m wn_jax.compare", description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("copy", help="the copy (a data folder, or see --copy-source)")
  parser.add_argument("original", help="the original (see --original-source)")
  parser.add_argument("--copy-source", default="folder", choices=sources.PATH_SOURCES)
  parser.add_argument("--original-source", default="cifar10_python",
                      choices=sources.PATH_SOURCES)
  parser.add_argument("--splits", default=",".join(SPLITS),
                      help="comma-separated splits to match and compare")
  parser.add_argument("--zca-split", default="train",
                      help="the split whose covariance ZCA is fitted on ('' skips step 3)")
  parser.add_argument("--regularization", type=float, default=1e-5,
                      help="ZCA regularisation of the tables by rank and the plot")
  parser.add_argument("--sample", type=int, default=3000,
                      help="copy images per split checked against the originals of all classes")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--plot", default="", help="write the plot to this .png")
  parser.add_argument("--json", default="", help="write all numbers here")
  args = parser.parse_args(argv)

  matches, distances, zca_pair = {}, {}, None
  for split in args.splits.split(","):
    start = time.perf_counter()
    try:
      copy_images, copy_labels, copy_classes = _load(args.copy, args.copy_source, split)
      original_images, original_labels, original_classes = _load(
        args.original, args.original_source, split)
      if copy_classes != original_classes:
        raise ValueError(f"{split}: the copy's classes {copy_classes} differ from the "
                         f"original's {original_classes}.")
      index, matches[split] = matching.match(copy_images, copy_labels, original_images, original_labels,
                                    sample_size=args.sample, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f"error: {e}")
    distances[split] = matching.pixel_distance(copy_images, original_images[index])
    if split == args.zca_split:
      zca_pair = (copy_images, original_images[index])
    print(f"{split}: matched {len(index)} images, {time.perf_counter() - start:.0f} s",
          flush=True)
  shares = None
  if zca_pair is not None:
    start = time.perf_counter()
    regularizations = sorted(set(REGULARIZATIONS) | {args.regularization})
    shares = error_shares(*zca_pair, regularizations=regularizations)
    print(f"{args.zca_split}: error shares, {time.perf_counter() - start:.0f} s", flush=True)
  print(markdown_report(matches, distances, shares, args.regularization))
  if args.plot and shares:
    plot(shares, args.regularization, args.plot)
    print(f"wrote {args.plot}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(_json_ready(matches, distances, shares), f)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
