r"""A lossy copy of an image data set against its original: matching, PSNR, and
how much of what ZCA whitening passes on is the copy's error.

Three steps; the first two are in `wn_jax.study.matching`, the third in
`wn_jax.study.residue`:

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
3. **Error share per eigen-direction** (`wn_jax.study.residue`): of the copy's
   ZCA-whitened variance, the share that is its error rather than the
   original's signal, per eigen-direction of the original's (or the
   copy's) training covariance, and in total.

This module reads the two data sets, runs the three steps and prints their
tables (and, on request, the plot and a JSON of every number); the
statistics are in `wn_jax.study.matching` and `wn_jax.study.residue`.

  python -m wn_jax.study.compare /data/cifar10-jpeg /data/cifar-10-batches-py \
      --original-source cifar10_python --plot docs/jpeg_error_share.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import ml_collections
import numpy as np

from wn_jax.data import sources
from wn_jax.study import matching, residue, spectrum

SPLITS = ("train", "test")


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
      for row in residue.rank_table(r["shares"][regularization]):
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
                   "rank_table": residue.rank_table(s)}
      for reg, s in r["shares"].items()}
    first = next(iter(r["shares"].values()))
    out["shares"][name]["by_rank"] = {
      "eigenvalues": first.eigenvalues.tolist(),
      **{field: getattr(first.stats, field).tolist() for field in residue.DirectionStatistics._fields}}
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m wn_jax.study.compare", description=__doc__.split("\n\n")[0],
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
    regularizations = sorted(set(residue.REGULARIZATIONS) | {args.regularization})
    shares = residue.error_shares(*zca_pair, regularizations=regularizations)
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
