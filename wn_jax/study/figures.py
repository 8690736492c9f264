"""What every figure does with runs, written once: group the runs by arm
(sorted by seed), cut each group's series to its shortest run, and give the
mean and standard error over seeds. The figures (`plot` for Figure 2 and
the norm and sweep plots, `plot_bound` for Figures 3 and 4, `plot_returns`
for Figure 5) are uses of it, each keyed by its task's metric. Runs are
read through `wn_jax.trainer.record_files`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

Run = TypeVar("Run")


def arm_label(config: dict) -> str:
  """What a run's arm is, from its config: the parameterization, and the
  start or reading where the config offers two ('normal (w direct)' for
  `model.normal_weights='direct'`, 'wn (g = ‖v‖)' for DRAW's
  `model.g_start='norm'`)."""
  model = config["model"]
  label = model["parameterization"]
  if (model.get("normal_weights", "scaled") == "direct" and model.get("data_init", True)
      and label in ("normal", "mobn")):
    label += " (w direct)"
  if model.get("g_start", "one") == "norm" and label == "wn":
    label += " (g = ‖v‖)"
  return label


def group_runs(runs: Iterable[Run], label: Callable[[Run], str],
               seed: Callable[[Run], Any] | None = None) -> dict[str, list[Run]]:
  """{label: its runs}, groups in first-seen order, each sorted by `seed`
  (if given; Python's sort is stable, so equal seeds keep their order)."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    groups.setdefault(label(run), []).append(run)
  if seed is not None:
    for members in groups.values():
      members.sort(key=seed)
  return groups


def stack(series: Sequence[tuple[Sequence[float], Sequence[float]]]
          ) -> tuple[np.ndarray, np.ndarray]:
  """x [T] and values [runs, T] of per-run (x, y) series, cut to the
  shortest run (x from the first run)."""
  n = min(len(y) for _, y in series)
  x = np.asarray(series[0][0][:n])
  return x, np.array([list(y[:n]) for _, y in series], np.float64)


def mean_and_standard_error(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard error (std with ddof=1 over sqrt(n); 0 for one run)
  over the runs axis 0 of values [runs, ...]."""
  n = values.shape[0]
  spread = values.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(values.shape[1])
  return values.mean(0), spread


def figure_parser(description: str) -> argparse.ArgumentParser:
  """The command line every figure shares: run folders, -o, --title."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("workdirs", nargs="+", help="run folders (metrics.jsonl + config.json)")
  parser.add_argument("-o", "--output", required=True, help="the figure (.png)")
  parser.add_argument("--title", default=None)
  return parser


def save_figure(fig: Any, output: str, title: str | None = None) -> None:
  """Every figure's ending: `title` over the whole figure (if given), a
  tight layout, `output` written at 120 dpi, the figure closed."""
  import matplotlib.pyplot as plt  # the plotting modules choose the backend

  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(output, dpi=120)
  plt.close(fig)
