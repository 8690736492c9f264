r"""The eigenvalue spectrum behind ZCA whitening, and what ZCA does with it.

ZCA (zca.fit_zca) multiplies the data's component along each
eigenvector of the training covariance by the gain `1 / sqrt(S + reg)`. With
the recipe's `reg = 1e-5`, a direction whose eigenvalue is near or below
1e-5 (the uint8 rounding noise alone puts (1/128)^2 / 12 = 5.09e-6 into every
direction) comes out of the whitening with a variance `S / (S + reg)` near
the signal directions' 1. This command measures, on the same covariance that
fit_zca uses (`zca.covariance_spectrum` of
`zca.zca_input`):

* how many eigenvalues fall below 1e-4, 1e-5, 1e-6, 1e-7;
* the gain range and the share of the whitened data's total variance,
  `sum S / (S + reg)`, carried by directions with `S < reg`, for each reg;
* the same counts for the luminance (Y) and chroma (Cb, Cr) planes alone
  (JPEG's colour transform, each plane's own [H*W] covariance), since 4:2:0
  chroma subsampling removes chroma high frequencies;

and plots eigenvalue and gain against rank.

  python -m wn_jax.study.spectrum /data/cifar10-jpeg --plot spectrum.png
  python -m wn_jax.study.spectrum /data/cifar-10-python.tar.gz --source cifar10_python
  # A check with a known answer: Gaussian data with eigenvalues top * k^-exponent,
  # rounded to uint8 like an image (adds 5.09e-6 to every eigenvalue).
  python -m wn_jax.study.spectrum --synthetic --plot synthetic.png
  # Save spectra, then show them beside others without recomputing them:
  python -m wn_jax.study.spectrum /data/a --json a.json
  python -m wn_jax.study.spectrum /data/b --with a.json --plot a_and_b.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import NamedTuple

import ml_collections
import numpy as np

from wn_jax.data import sources, zca

THRESHOLDS = (1e-4, 1e-5, 1e-6, 1e-7)
REGULARIZATIONS = (1e-5, 1e-3, 1e-2)
# Variance of uint8 rounding after (x - 127.5) / 128: a uniform error of one
# level, (1/128)^2 / 12 per pixel, the same in every direction.
ROUNDING_NOISE_VARIANCE = (1.0 / 128.0) ** 2 / 12.0


class RegularizationEffect(NamedTuple):
  """What ZCA with one regularisation does to a spectrum.

  Attributes:
    regularization: reg.
    max_gain: 1 / sqrt(S_min + reg), the largest amplification.
    min_gain: 1 / sqrt(S_max + reg).
    whitened_variance: sum S / (S + reg), the whitened data's total variance
      (= dim if reg were 0).
    share_below: the share of `whitened_variance` carried by the directions
      with S < reg.
    num_below: how many directions have S < reg.
  """

  regularization: float
  max_gain: float
  min_gain: float
  whitened_variance: float
  share_below: float
  num_below: int


def count_below(eigenvalues: np.ndarray, thresholds=THRESHOLDS) -> dict[float, int]:
  """{threshold: number of eigenvalues < threshold}."""
  return {t: int(np.sum(eigenvalues < t)) for t in thresholds}


def regularization_effect(eigenvalues: np.ndarray, regularization: float) -> RegularizationEffect:
  """Gains and whitened variance of ZCA with `regularization` on `eigenvalues: [dim]`."""
  gains = 1.0 / np.sqrt(eigenvalues + regularization)
  variance = eigenvalues / (eigenvalues + regularization)  # per direction, after ZCA
  below = eigenvalues < regularization
  return RegularizationEffect(
    regularization=regularization,
    max_gain=float(gains.max()),
    min_gain=float(gains.min()),
    whitened_variance=float(variance.sum()),
    share_below=float(variance[below].sum() / variance.sum()),
    num_below=int(below.sum()),
  )


def rgb_to_ycbcr(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, 3] RGB -> float32 [N, H, W, 3] Y, Cb, Cr in [0, 255].

  The JPEG (JFIF, full-range BT.601) colour transform, unrounded.
  """
  rgb = images.astype(np.float32)
  matrix = np.array([[0.299, 0.587, 0.114],
                     [-0.168736, -0.331264, 0.5],
                     [0.5, -0.418688, -0.081312]], dtype=np.float32)
  return rgb @ matrix.T + np.array([0.0, 128.0, 128.0], dtype=np.float32)


def plane_spectra(images: np.ndarray) -> dict[str, np.ndarray]:
  """{'Y', 'Cb', 'Cr': eigenvalues [H*W] ascending} of each plane's covariance,
  scaled like the pixels, `(v - 127.5) / 128`."""
  planes = rgb_to_ycbcr(images)
  spectra = {}
  for index, name in enumerate(("Y", "Cb", "Cr")):
    rows = (planes[..., index].reshape(len(images), -1) - 127.5) / 128.0
    spectra[name] = zca.covariance_spectrum(rows).eigenvalues
  return spectra


def synthetic_images(
  seed: int, num_examples: int, size: int, top: float, exponent: float
) -> tuple[np.ndarray, np.ndarray]:
  """Gaussian images with a known covariance spectrum, rounded to uint8.

  The scaled pixels `x = (uint8 - 127.5) / 128` are `z diag(sqrt(lam)) Q^T`
  rounded to the uint8 grid, with z ~ N(0, I), Q a random rotation and the
  population eigenvalues `lam_k = top * k^-exponent` (k = 1..dim, a power
  law like natural images'). The rounding adds a nearly independent uniform
  error of variance ROUNDING_NOISE_VARIANCE per pixel, so the covariance's
  eigenvalues are `lam_k + ROUNDING_NOISE_VARIANCE` (plus sampling error).

  Returns:
    images: uint8 [num_examples, size, size, 3].
    eigenvalues: float64 [dim] ascending, lam + ROUNDING_NOISE_VARIANCE.
  """
  dim = size * size * 3
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  population = top * np.arange(1, dim + 1, dtype=np.float64) ** -exponent
  mixing = (np.sqrt(population)[:, None] * rotation.T).astype(np.float32)
  x = rng.standard_normal((num_examples, dim), dtype=np.float32) @ mixing
  pixels = np.clip(np.round(x * 128.0 + 127.5), 0, 255)
  clipped = np.mean((pixels == 0) | (pixels == 255))
  if clipped > 1e-4:
    raise ValueError(f"{clipped:.2%} of the synthetic pixels clip at 0 or 255; lower top.")
  images = pixels.astype(np.uint8).reshape(num_examples, size, size, 3)
  return images, np.sort(population + ROUNDING_NOISE_VARIANCE)


def analyse(images: np.ndarray, *, planes: bool = True) -> dict:
  """The spectrum and its summaries for uint8 images [N, H, W, 3]."""
  eigenvalues = zca.covariance_spectrum(zca.zca_input(images)).eigenvalues
  return summarize(eigenvalues, len(images), plane_spectra(images) if planes else None)


def markdown_tables(results: dict[str, dict]) -> str:
  """The printed report: counts, effects per regularisation, plane counts."""
  lines = ["| data | N | dim | largest | median | smallest | "
           + " | ".join(f"< {t:g}" for t in THRESHOLDS) + " |",
           "| --- " * (6 + len(THRESHOLDS)) + "|"]
  for name, r in results.items():
    e = r["eigenvalues"]
    lines.append(f"| {name} | {r['num_examples']} | {r['dim']} | {e[-1]:.3g} | "
                 f"{np.median(e):.3g} | {e[0]:.3g} | "
                 + " | ".join(str(r["below"][t]) for t in THRESHOLDS) + " |")
  lines += ["", "| data | reg | directions with S < reg | largest gain | smallest gain | "
            "whitened variance sum S/(S+reg) | share from S < reg |",
            "| --- " * 7 + "|"]
  for name, r in results.items():
    for f in r["effects"]:
      lines.append(f"| {name} | {f.regularization:g} | {f.num_below} | {f.max_gain:.1f} | "
                   f"{f.min_gain:.3f} | {f.whitened_variance:.0f} | {f.share_below:.1%} |")
  if any("planes" in r for r in results.values()):
    lines += ["", "| data | plane | largest | median | smallest | "
              + " | ".join(f"< {t:g}" for t in THRESHOLDS) + " |",
              "| --- " * (5 + len(THRESHOLDS)) + "|"]
    for name, r in results.items():
      for plane, p in r.get("planes", {}).items():
        e = p["eigenvalues"]
        lines.append(f"| {name} | {plane} | {e[-1]:.3g} | {np.median(e):.3g} | {e[0]:.3g} | "
                     + " | ".join(str(p["below"][t]) for t in THRESHOLDS) + " |")
  return "\n".join(lines)


def plot(results: dict[str, dict], path: str, known: np.ndarray | None = None) -> None:
  """Eigenvalue vs rank (log), regularisations marked; gain vs rank; planes."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with_planes = any("planes" in r for r in results.values())
  fig, axes = plt.subplots(1, 3 if with_planes else 2, figsize=(16 if with_planes else 11, 4.5))
  styles = ["-", "--", ":", "-."]
  for index, (name, r) in enumerate(results.items()):
    descending = r["eigenvalues"][::-1]
    rank = np.arange(1, len(descending) + 1)
    axes[0].loglog(rank, descending, styles[index % 4], label=name)
    for reg, colour in zip(REGULARIZATIONS, ("C3", "C4", "C5")):
      axes[1].loglog(rank, 1 / np.sqrt(descending + reg), styles[index % 4], color=colour,
                     label=f"{name}, reg {reg:g}")
  if known is not None:
    axes[0].loglog(np.arange(1, len(known) + 1), known[::-1], "k:", lw=1,
                   label="known: lam_k + rounding noise")
  for reg, colour in zip(REGULARIZATIONS, ("C3", "C4", "C5")):
    axes[0].axhline(reg, color=colour, lw=0.8, label=f"reg {reg:g}")
  axes[0].axhline(ROUNDING_NOISE_VARIANCE, color="gray", lw=0.8, ls="--",
                  label="uint8 rounding noise 5.09e-6")
  axes[0].set(xlabel="rank", ylabel="eigenvalue of the covariance",
              title="ZCA input spectrum, (x - 127.5) / 128")
  axes[1].set(xlabel="rank", ylabel="ZCA gain 1 / sqrt(S + reg)", title="gain per direction")
  axes[0].legend(fontsize=7)
  axes[1].legend(fontsize=7)
  if with_planes:
    for index, (name, r) in enumerate(results.items()):
      for plane, colour in zip(("Y", "Cb", "Cr"), ("k", "C0", "C3")):
        if plane in r.get("planes", {}):
          e = r["planes"][plane]["eigenvalues"][::-1]
          axes[2].loglog(np.arange(1, len(e) + 1), e, styles[index % 4], color=colour,
                         label=f"{name} {plane}")
    axes[2].axhline(ROUNDING_NOISE_VARIANCE, color="gray", lw=0.8, ls="--")
    axes[2].set(xlabel="rank", ylabel="eigenvalue", title="per plane (H*W covariance)")
    axes[2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _json_ready(results: dict[str, dict]) -> dict:
  out = {}
  for name, r in results.items():
    out[name] = {
      "num_examples": r["num_examples"], "dim": r["dim"],
      "eigenvalues_descending": r["eigenvalues"][::-1].tolist(),
      "below": {f"{t:g}": n for t, n in r["below"].items()},
      "effects": [f._asdict() for f in r["effects"]],
      "planes": {p: {"eigenvalues_descending": v["eigenvalues"][::-1].tolist(),
                     "below": {f"{t:g}": n for t, n in v["below"].items()}}
                 for p, v in r.get("planes", {}).items()},
    }
  return out


def summarize(eigenvalues: np.ndarray, num_examples: int,
              planes: dict[str, np.ndarray] | None = None) -> dict:
  """The summaries of `analyse` for eigenvalues already computed (ascending)."""
  result = {
    "num_examples": num_examples,
    "dim": len(eigenvalues),
    "eigenvalues": eigenvalues,
    "below": count_below(eigenvalues),
    "effects": [regularization_effect(eigenvalues, r) for r in REGULARIZATIONS],
  }
  if planes:
    result["planes"] = {name: {"eigenvalues": e, "below": count_below(e)}
                        for name, e in planes.items()}
  return result


def load_results(path: str) -> dict[str, dict]:
  """Results saved with --json, summaries recomputed from the eigenvalues."""
  with open(path) as f:
    saved = json.load(f)
  return {
    name: summarize(
      np.asarray(r["eigenvalues_descending"])[::-1], r["num_examples"],
      {p: np.asarray(v["eigenvalues_descending"])[::-1] for p, v in r["planes"].items()})
    for name, r in saved.items()
  }


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m wn_jax.study.spectrum", description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("data", nargs="*",
                      help="data folders (or CIFAR-10 directories / archives with --source)")
  parser.add_argument("--source", default="folder", choices=sources.PATH_SOURCES)
  parser.add_argument("--split", default="train", help="the split to analyse (ZCA: train)")
  parser.add_argument("--synthetic", action="store_true",
                      help="also analyse Gaussian images with a known spectrum")
  parser.add_argument("--synthetic-examples", type=int, default=50_000)
  parser.add_argument("--synthetic-size", type=int, default=32)
  parser.add_argument("--synthetic-top", type=float, default=10.0)
  parser.add_argument("--synthetic-exponent", type=float, default=2.0)
  parser.add_argument("--no-planes", action="store_true", help="skip the Y/Cb/Cr spectra")
  parser.add_argument("--plot", default="", help="write the plot to this .png")
  parser.add_argument("--json", default="", help="write all spectra and numbers here")
  parser.add_argument("--with", dest="saved", action="append", default=[],
                      help="also show the spectra saved earlier with --json in this file")
  args = parser.parse_args(argv)
  if not args.data and not args.synthetic and not args.saved:
    parser.error("give at least one data folder, --synthetic or --with")

  results, known = {}, None
  for path in args.saved:
    results.update(load_results(path))
  for path in args.data:
    start = time.perf_counter()
    config = ml_collections.ConfigDict(dict(source=args.source, name="", folder=path,
                                            tfds_data_dir="", train_split=args.split,
                                            test_split=args.split))
    images = sources.load_dataset(config).train_images
    name = os.path.basename(os.path.normpath(path))
    results[name] = analyse(images, planes=not args.no_planes)
    print(f"{name}: {len(images)} images, {time.perf_counter() - start:.0f} s", flush=True)
  if args.synthetic:
    images, known = synthetic_images(0, args.synthetic_examples, args.synthetic_size,
                                     args.synthetic_top, args.synthetic_exponent)
    name = f"synthetic {args.synthetic_top:g} k^-{args.synthetic_exponent:g}"
    results[name] = analyse(images, planes=False)
    measured = results[name]["eigenvalues"]
    ratio = measured / known
    print(f"{name}: measured / known eigenvalue (ascending rank): min {ratio.min():.3f}, "
          f"median {np.median(ratio):.3f}, max {ratio.max():.3f}; largest 100: "
          f"{ratio[-100:].min():.3f}..{ratio[-100:].max():.3f}; known counts below "
          + ", ".join(f"{t:g}: {n}" for t, n in count_below(known).items()))
  print(markdown_tables(results))
  if args.plot:
    plot(results, args.plot, known)
    print(f"wrote {args.plot}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(_json_ready(results), f)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
