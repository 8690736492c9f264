"""Plots from saved workdirs (metrics.jsonl + config.json).

  python -m wn_jax.plot WORKDIR [WORKDIR ...] -o curves.png
      training and test error vs epoch, one line per run (paper Figure 2),
      labelled by parameterization (and seed when runs differ in it);
  python -m wn_jax.plot --kind curves_mean WORKDIR [...] -o mean.png
      the same, one line per parameterization: the mean over its runs
      (seeds), a band from the lowest to the highest; prints each
      parameterization's final test errors;
  python -m wn_jax.plot --kind norms WORKDIR [...] -o norms.png
      mean ||v|| and mean g/||v|| of every WN layer vs step (section 2.1);
  python -m wn_jax.plot --kind lr_sweep WORKDIR [...] -o lr.png
      final test error vs learning rate, a line per parameterization, the
      mean over seeds (error bars: min and max).
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


def read_run(workdir: str) -> tuple[dict, list[dict]]:
  """Returns (config dict, per-epoch records) of a workdir."""
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  config_path = os.path.join(workdir, "config.json")
  for path in (metrics_path, config_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  with open(config_path) as f:
    config = json.load(f)
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  epochs = [r for r in records if "test_error" in r]
  if not epochs:
    raise ValueError(f"{metrics_path} holds no finished epoch yet.")
  return config, epochs


def _save(fig, output: str, title: str | None) -> None:
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(output, dpi=120)
  plt.close(fig)


def read_norms(workdir: str) -> tuple[dict, list[int], dict[str, list[float]]]:
  """(config, steps, {'<layer>/v_norm' or '<layer>/g_over_v_norm': values})."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if "/v_norm" in line]
  if not records:
    raise ValueError(f"{workdir}/metrics.jsonl has no weight-norm records: is it a "
                     "WN run with config.log_norms_every_steps > 0?")
  keys = [k for k in records[0] if k.endswith("_norm")]
  return config, [r["step"] for r in records], {k: [r[k] for r in records] for k in keys}


def plot_norms(workdirs: Sequence[str], output: str, title: str | None = None) -> None:
  """Mean ||v|| and g/||v|| per WN layer vs step; colour = layer, style = run."""
  fig, (ax_v, ax_scale) = plt.subplots(1, 2, figsize=(12, 4.5))
  styles = ["-", "--", ":", "-."]
  for run_index, workdir in enumerate(workdirs):
    config, steps, series = read_norms(workdir)
    layers = sorted({k.rsplit("/", 1)[0] for k in series})
    cmap = plt.get_cmap("viridis", len(layers))
    style = styles[run_index % len(styles)]
    run = (f"{config['model']['parameterization']} "
           f"lr {config['optimizer']['learning_rate']:g}")
    for i, layer in enumerate(layers):
      label = run if i == 0 else None
      ax_v.plot(steps, series[f"{layer}/v_norm"], style, color=cmap(i), label=label)
      ax_scale.plot(steps, series[f"{layer}/g_over_v_norm"], style, color=cmap(i))
  ax_v.set_title("mean ||v|| per layer (colour: depth)")
  ax_scale.set_title("mean g/||v|| (effective scale) per layer")
  ax_scale.set_yscale("log")
  for ax in (ax_v, ax_scale):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  ax_v.legend()
  _save(fig, output, title)


def lr_sweep_table(workdirs: Sequence[str]) -> dict[str, dict[float, list[float]]]:
  """{parameterization: {learning rate: [final test error of each seed]}}."""
  table: dict[str, dict[float, list[float]]] = {}
  for workdir in workdirs:
    config, epochs = read_run(workdir)
    name = run_label(config, with_seed=False)
    lr = config["optimizer"]["learning_rate"]
    table.setdefault(name, {}).setdefault(lr, []).append(epochs[-1]["test_error"])
  return table


def plot_lr_sweep(workdirs: Sequence[str], output: str, title: str | None = None) -> None:
  """Final test error vs learning rate, one line per parameterization."""
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for name, by_lr in sorted(lr_sweep_table(workdirs).items()):
    lrs = sorted(by_lr)
    errors = [100 * np.asarray(by_lr[lr]) for lr in lrs]
    means = [e.mean() for e in errors]
    spread = [[m - e.min() for m, e in zip(means, errors)],
              [e.max() - m for m, e in zip(means, errors)]]
    ax.errorbar(lrs, means, yerr=spread, marker="o", capsize=3, label=name)
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("final test error (%)")
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, output, title)


def run_label(config: dict, with_seed: bool) -> str:
  model = config["model"]
  label = model["parameterization"]
  if not model.get("data_init", True):
    label += " (no data init)"
  if with_seed:
    label += f" seed {config['seed']}"
  return label


def plot_runs(workdirs: Sequence[str], output: str, title: str | None = None) -> None:
  """Draws training and test error vs epoch of `workdirs` into `output`."""
  runs = [read_run(w) for w in workdirs]
  with_seed = len({c["seed"] for c, _ in runs}) > 1
  fig, (ax_train, ax_test) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for config, epochs in runs:
    x = [r["epoch"] for r in epochs]
    label = run_label(config, with_seed)
    line, = ax_train.plot(x, [100 * r["train_error"] for r in epochs], label=label)
    ax_test.plot(x, [100 * r["test_error"] for r in epochs], label=label,
                 color=line.get_color())
  for ax, name in ((ax_train, "training error (noise, dropout on)"),
                   (ax_test, "test error")):
    ax.set_xlabel("epoch")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  ax_train.set_ylabel("error (%)")
  ax_test.legend()
  _save(fig, output, title)


def group_runs(workdirs: Sequence[str]) -> dict[str, list[list[dict]]]:
  """{label without seed: [per-epoch records of each run]}, in first-seen order."""
  groups: dict[str, list[list[dict]]] = {}
  for workdir in workdirs:
    config, epochs = read_run(workdir)
    groups.setdefault(run_label(config, with_seed=False), []).append(epochs)
  return groups


def plot_runs_mean(workdirs: Sequence[str], output: str, title: str | None = None) -> None:
  """Training and test error vs epoch: mean over each parameterization's
  runs, band = min..max. Epochs beyond the shortest run of a group are cut."""
  fig, (ax_train, ax_test) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for label, runs in group_runs(workdirs).items():
    num_epochs = min(len(epochs) for epochs in runs)
    x = [r["epoch"] for r in runs[0][:num_epochs]]
    num_runs = f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
    legend = f"{label} ({num_runs})"
    color = None
    for ax, key in ((ax_train, "train_error"), (ax_test, "test_error")):
      values = 100 * np.array([[r[key] for r in epochs[:num_epochs]] for epochs in runs])
      line, = ax.plot(x, values.mean(0), label=legend, color=color)
      color = line.get_color()
      ax.fill_between(x, values.min(0), values.max(0), color=color, alpha=0.2)
    finals = [f"{100 * epochs[num_epochs - 1]['test_error']:.2f}" for epochs in runs]
    mean = np.mean([epochs[num_epochs - 1]["test_error"] for epochs in runs])
    print(f"{label}: test error after epoch {x[-1]:g}: mean {100 * mean:.2f}% "
          f"over {num_runs} ({', '.join(finals)})")
  for ax, name in ((ax_train, "training error (noise, dropout on)"),
                   (ax_test, "test error")):
    ax.set_xlabel("epoch")
    ax.set_title(name + ": mean, band min..max")
    ax.grid(alpha=0.3)
  ax_train.set_ylabel("error (%)")
  ax_test.legend()
  _save(fig, output, title)


PLOTS = {"curves": plot_runs, "curves_mean": plot_runs_mean, "norms": plot_norms, "lr_sweep": plot_lr_sweep}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("-o", "--output", required=True, help="PNG file to write.")
  parser.add_argument("--kind", choices=sorted(PLOTS), default="curves")
  parser.add_argument("--title", default=None)
  args = parser.parse_args(argv)
  PLOTS[args.kind](args.workdirs, args.output, args.title)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
