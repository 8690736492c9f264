"""Every committed figure that is drawn from committed records, redrawn.

`catalogue()` lists them: each PNG of `docs/` drawn from run records,
with the figures command (`plot`, `plot_bound` or `plot_returns`, all
through `wn_jax.study.figures`) and the record folders it reads, as the
docs give them. Run from the repository root:

  python -m wn_jax.study.regenerate           # redraw them all into docs/
  python -m wn_jax.study.regenerate --check   # redraw into a temporary folder
                                              # and compare pixel by pixel
  python -m wn_jax.study.regenerate --only figure3_cpu_vae_mnist.png

`--check` prints, per figure, 'identical' or how many pixels differ and by
how much, and exits 1 if any differs. The figures drawn from data rather
than records (the ZCA spectra, the JPEG error share: `docs/REPRODUCTION.md`)
need the data sets and are not in the catalogue.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from wn_jax.study import plot, plot_bound, plot_returns
from wn_jax.trainer import record_files

DOCS = "docs"
TOOLS = {"plot": plot.main, "plot_bound": plot_bound.main, "plot_returns": plot_returns.main}


def runs(folder: str, *names: str) -> list[str]:
  """docs/runs/<folder>/<name> for each name; a name with '*' is a glob
  (sorted, as the shell lists it)."""
  paths = []
  for name in names:
    pattern = os.path.join(DOCS, "runs", folder, name)
    found = sorted(glob.glob(pattern)) if "*" in name else [pattern]
    if not found:
      raise FileNotFoundError(f"No record folder matches {pattern}.")
    paths += found
  return paths


def last_epoch(workdir: str) -> int:
  """The last evaluated epoch of a run's records."""
  return max(r["epoch"] for r in record_files.read_records(workdir) if "epoch" in r)


def _seeds(prefix: str, seeds: Sequence[int]) -> list[str]:
  return [f"{prefix}_s{seed}" for seed in seeds]


QUICK = "quick preset (width 16, 10 epochs)"

def catalogue() -> dict[str, tuple[str, list[str]]]:
  """PNG in docs/ -> (tool, its arguments before -o), the record folders
  listed from the current folder (the repository root). The commands are
  those of the docs that show each figure (docs/CIFAR.md, RESULTS.md,
  REPRODUCTION.md, VAE.md, DRAW.md, DQN.md)."""
  draw_wn = runs("cpu_draw_figure4", "wn_lr0.0003_s0")
  draw_normal = runs("cpu_draw_figure4", "normal_lr0.0003_s0")
  draw_g_norm = runs("cpu_draw_mnist", "wn_lr0.0003_s0")
  return {
      "figure2_cpu_quick_original.png": ("plot", [
          *runs("cpu_quick_original", "*_lr0.001_s0"),
          "--title", f"{QUICK}, lr 1e-3, seed 0, original CIFAR-10, 2-core CPU"]),
      "figure2_quick_mean.png": ("plot", [
          "--kind", "curves_mean",
          *runs("gpu_quick", *[f"{p}_lr0.001_s{s}" for p in ("normal", "wn", "bn", "mobn")
                               for s in (0, 1)]),
          *runs("cpu_quick", *[f"{p}_lr0.001_s{s}" for p in ("normal", "wn") for s in (0, 2)]),
          *runs("cpu_quick", "bn_lr0.001_s0", "mobn_lr0.001_s0",
                *_seeds("wn_mobn_lr0.001", (0, 1, 2))),
          "--title", f"{QUICK}, lr 1e-3: H100 and CPU runs"]),
      "figure2_gpu_quick.png": ("plot", [
          *runs("gpu_quick", *[f"{p}_lr0.001_s{s}" for p in ("normal", "wn", "bn", "mobn")
                               for s in (0, 1)]),
          "--title", f"{QUICK}, lr 1e-3, two seeds, H100"]),
      "figure2_cpu_quick.png": ("plot", [
          *runs("cpu_quick", *[f"{p}_lr0.001_s0" for p in
                               ("normal", "wn", "bn", "mobn", "wn_mobn")]),
          "--title", f"{QUICK}, lr 1e-3, seed 0, 2-core CPU"]),
      "lr_sweep_quick.png": ("plot", [
          "--kind", "lr_sweep",
          *runs("gpu_quick", "normal_lr*_s0", "normal_lr*_s1", "wn_lr*_s0", "wn_lr*_s1"),
          *runs("cpu_quick", "wn_mobn_lr*_s0", "wn_mobn_lr*_s1"),
          "--title", "final test error after 10 epochs (quick preset; seed 0, + seed 1 at 1e-3)"]),
      "norms_gpu_quick.png": ("plot", [
          "--kind", "norms", *runs("gpu_quick", "wn_lr0.001_s0", "wn_lr0.01_s0"),
          "--title", "wn, quick preset: lr 1e-3 (solid) vs 1e-2 (dashed)"]),
      "norms_wn_mobn_cpu_quick.png": ("plot", [
          "--kind", "norms", *runs("cpu_quick", "wn_mobn_lr0.003_s0", "wn_mobn_lr0.01_s0"),
          "--title", "wn_mobn, quick preset, CPU: lr 3e-3 (solid) vs 1e-2 (dashed)"]),
      "init_ablation_cpu_quick.png": ("plot", [
          "--kind", "curves_mean",
          *runs("cpu_quick", *_seeds("wn_lr0.001", (0, 2)), *_seeds("wn_nodatainit_lr0.001", (0, 2)),
                *_seeds("normal_lr0.001", (0, 2))),
          "--title", "init ablation, quick preset, lr 1e-3, seeds 0 and 2, 2-core CPU"]),
      "init_order_cpu_quick.png": ("plot", [
          "--kind", "curves_mean",
          *runs("cpu_quick", *_seeds("wn_lr0.001", (0, 1, 2)),
                *_seeds("wn_independentinit_lr0.001", (0, 1, 2))),
          "--title", "init order, quick preset, lr 1e-3, seeds 0-2, 2-core CPU"]),
      "overfit_original_vs_jpeg.png": ("plot", [
          "--kind", "curves_mean",
          *runs("cpu_overfit", "original_s0", "original_s1", "jpeg_s0", "jpeg_s1"),
          "--title", "width 32, 500 training images (50 per class), 150 epochs, lr 1e-3, "
          "2 seeds, 2-core CPU"]),
      "figure3_cpu_vae_mnist.png": ("plot_bound", [
          *runs("cpu_vae_mnist", *[f"{p}_lr0.002_s{s}" for p in ("normal", "normal_direct", "wn")
                                   for s in (0, 1)]),
          "--title", "MNIST VAE, 2-core CPU: the two readings of normal, and wn (3 epochs, "
          "seeds 0 and 1)"]),
      "figure4_cpu_draw_mnist.png": ("plot_bound", [
          *draw_wn, *draw_normal, *draw_g_norm, "--paper", "figure4",
          "--title", f"DRAW on MNIST, 2-core CPU, seed 0: wn (g = 1) to epoch "
          f"{last_epoch(*draw_wn)}, normal to epoch {last_epoch(*draw_normal)}, "
          f"wn (g = \u2016v\u2016) to epoch {last_epoch(*draw_g_norm)}"]),
      "figure4_cpu_draw_short.png": ("plot_bound", [
          *runs("cpu_draw_short", "*"),
          "--title", "DRAW with T = 16 glimpses (a different model), 10 epochs"]),
      "figure5_cpu_dqn_minatar.png": ("plot_returns", [
          *runs("cpu_dqn_minatar", "*"),
          "--title", "MinAtar Space Invaders, 40 epochs (1M env steps)"]),
      "figure5_cpu_dqn_minatar_breakout.png": ("plot_returns", [
          *runs("cpu_dqn_minatar_breakout", "*"),
          "--title", "MinAtar Breakout, 20 epochs (500k env steps)"]),
  }


def draw(figures: dict[str, tuple[str, list[str]]], name: str, output: str) -> None:
  """Draws catalogue entry `name` into `output`."""
  tool, arguments = figures[name]
  TOOLS[tool]([*arguments, "-o", output])


def pixel_difference(a_path: str, b_path: str) -> str:
  """'identical', or how the two PNGs differ (size; pixels and by how much)."""
  from PIL import Image
  a = np.asarray(Image.open(a_path).convert("RGBA"), np.int16)
  b = np.asarray(Image.open(b_path).convert("RGBA"), np.int16)
  if a.shape != b.shape:
    return f"size {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}"
  differ = np.any(a != b, axis=-1)
  if not differ.any():
    return "identical"
  return (f"{int(differ.sum())} of {differ.size} pixels differ "
          f"(max {int(np.abs(a - b).max())} of 255)")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--check", action="store_true",
                      help="redraw into a temporary folder and compare with docs/")
  parser.add_argument("--only", nargs="+", default=None, metavar="PNG",
                      help="these catalogue entries only")
  args = parser.parse_args(argv)
  if not os.path.isdir(os.path.join(DOCS, "runs")):
    parser.error("run from the repository root (docs/runs/ not found).")
  figures = catalogue()
  unknown = sorted(set(args.only or ()) - set(figures))
  if unknown:
    parser.error(f"not in the catalogue: {unknown}; it has {sorted(figures)}.")
  names = args.only or list(figures)
  if not args.check:
    for name in names:
      draw(figures, name, os.path.join(DOCS, name))
    return
  different = []
  with tempfile.TemporaryDirectory() as folder:
    for name in names:
      output = os.path.join(folder, name)
      draw(figures, name, output)
      result = pixel_difference(os.path.join(DOCS, name), output)
      print(f"{name}: {result}")
      if result != "identical":
        different.append(name)
  if different:
    print(f"{len(different)} of {len(names)} differ: {', '.join(different)}")
    sys.exit(1)
  print(f"all {len(names)} identical")


if __name__ == "__main__":
  main()
