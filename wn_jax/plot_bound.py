"""Figure 3 in the manner of the paper: the test bound against training epochs.

  python -m wn_jax.plot_bound WORKDIR [WORKDIR ...] -o bound.png

For runs of a latent-variable task (the VAE), one line per
parameterization, the mean over its runs (seeds) with a band of +- one
standard error (Figure 3's error bars); left: the bound on the fixed test
subset every `eval_every_steps` (the early-training curve), right: on the
whole test set after each epoch, with the raw and (dashed) the averaged
parameters. Prints a markdown table of the per-epoch numbers (mean, the
spread over seeds, the paired differences to the first group) and the
final importance-weighted bounds.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wn_jax.plot import arm_label  # noqa: E402


def read_bound_run(workdir: str) -> dict:
  """A run's config and records: {'config', 'subset' [(epoch, record)],
  'epochs' [record], 'final' record or None}."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  epochs = [r for r in records if "test_elbo" in r]
  if not epochs:
    raise ValueError(f"{workdir}/metrics.jsonl holds no evaluated epoch yet.")
  steps_per_epoch = epochs[0]["step"] / epochs[0]["epoch"]
  subset = [(r["step"] / steps_per_epoch, r) for r in records if "subset_test_elbo" in r]
  finals = [r for r in records if "final" in r]
  return {"config": config, "subset": subset, "epochs": epochs,
          "final": finals[-1] if finals else None}


def group_by_parameterization(workdirs: Sequence[str]) -> dict[str, list[dict]]:
  groups: dict[str, list[dict]] = {}
  for workdir in workdirs:
    run = read_bound_run(workdir)
    groups.setdefault(arm_label(run["config"]), []).append(run)
  for runs in groups.values():
    runs.sort(key=lambda run: run["config"]["seed"])
  return groups


def _series(runs: list[dict], part: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """x [T] and values [runs, T], cut to the shortest run."""
  if part == "subset":
    n = min(len(run["subset"]) for run in runs)
    x = np.array([epoch for epoch, _ in runs[0]["subset"][:n]])
    values = np.array([[r[key] for _, r in run["subset"][:n]] for run in runs])
  else:
    n = min(len(run["epochs"]) for run in runs)
    x = np.array([r["epoch"] for r in runs[0]["epochs"][:n]])
    values = np.array([[r[key] for r in run["epochs"][:n]] for run in runs])
  return x, values


def mean_and_standard_error(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard error (std with ddof=1 over sqrt(n); 0 for one run)
  over the runs axis 0 of values [runs, ...]."""
  n = values.shape[0]
  spread = values.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(values.shape[1])
  return values.mean(0), spread


def plot_bound(workdirs: Sequence[str], output: str, title: str | None = None) -> str:
  """Draws the figure into `output`; returns the markdown table."""
  groups = group_by_parameterization(workdirs)
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for i, (name, runs) in enumerate(groups.items()):
    color = f"C{i % 10}"
    label = f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
    if all(run["subset"] for run in runs):
      x, values = _series(runs, "subset", "subset_test_elbo")
      mean, spread = mean_and_standard_error(values)
      left.plot(x, mean, color=color, label=label)
      left.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.25)
    for key, style in (("test_elbo", "-"), ("ema_test_elbo", "--")):
      if all(key in run["epochs"][0] for run in runs):
        x, values = _series(runs, "epochs", key)
        mean, spread = mean_and_standard_error(values)
        right.errorbar(x, mean, yerr=spread, color=color, linestyle=style, marker="o",
                       capsize=3, label=f"{label}{' averaged' if key.startswith('ema') else ''}")
  left.set(xlabel="training epochs", ylabel="test bound (nats per image)",
           title="fixed test subset, raw parameters")
  right.set(xlabel="training epochs", ylabel="test bound (nats per image)",
            title="whole test set (dashed: averaged parameters)")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(output, dpi=120)
  plt.close(fig)
  return bound_table(groups)


def bound_table(groups: dict[str, list[dict]]) -> str:
  """Markdown: per parameterization and epoch, the test bound (raw and
  averaged) as mean, standard error and the per-seed values; the paired
  difference to the first group (same seeds); the final IWAE bound."""
  names = list(groups)
  lines = ["| parameterization | epoch | seeds | test ELBO, raw: mean +- s.e. (per seed) | "
           f"averaged | raw minus {names[0]}, paired (per seed) |",
           "| --- | --- | --- | --- | --- | --- |"]
  _, reference = _series(groups[names[0]], "epochs", "test_elbo")
  for name, runs in groups.items():
    x, raw = _series(runs, "epochs", "test_elbo")
    averaged = (_series(runs, "epochs", "ema_test_elbo")[1]
                if "ema_test_elbo" in runs[0]["epochs"][0] else None)
    for t, epoch in enumerate(x):
      mean, spread = mean_and_standard_error(raw[:, t:t + 1])
      row = (f"| {name} | {epoch:g} | {raw.shape[0]} | {mean[0]:.2f} +- {spread[0]:.2f} "
             f"({', '.join(f'{v:.2f}' for v in raw[:, t])}) | ")
      row += (f"{averaged[:, t].mean():.2f} | " if averaged is not None else "- | ")
      paired = (raw[:, t] - reference[:raw.shape[0], t]
                if reference.shape[1] > t and reference.shape[0] >= raw.shape[0] else None)
      row += ("- |" if name == names[0] or paired is None else
              f"{paired.mean():+.2f} ({', '.join(f'{v:+.2f}' for v in paired)}) |")
      lines.append(row)
  finals = [(name, run["config"]["seed"], run["final"]) for name, runs in groups.items()
            for run in runs if run["final"]]
  if finals:
    lines += ["", "| parameterization | seed | final measurement |", "| --- | --- | --- |"]
    for name, seed, final in finals:
      values = ", ".join(f"{k} {v:.2f}" for k, v in final.items()
                         if k not in ("step", "final"))
      lines.append(f"| {name} | {seed} | {values} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", help="run folders (metrics.jsonl + config.json)")
  parser.add_argument("-o", "--output", required=True, help="the figure (.png)")
  parser.add_argument("--title", default=None)
  args = parser.parse_args(argv)
  print(plot_bound(args.workdirs, args.output, args.title))


if __name__ == "__main__":
  main()
