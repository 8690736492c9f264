"""Plots from saved workdirs (metrics.jsonl + config.json).

  python -m wn_jax.study.plot WORKDIR [WORKDIR ...] -o curves.png
      training loss, training error (paper Figure 2), test error and test
      loss vs epoch, one line per run, labelled by parameterization (and
      seed, or data, when runs differ in it);
  python -m wn_jax.study.plot --kind curves_mean WORKDIR [...] -o mean.png
      the same, one line per parameterization (and data): the mean over
      its runs (seeds), a band from the lowest to the highest; prints a
      table of the training and test errors behind it;
  python -m wn_jax.study.plot --kind norms WORKDIR [...] -o norms.png
      mean ||v|| and mean g/||v|| of every WN layer vs step (section 2.1);
  python -m wn_jax.study.plot --kind lr_sweep WORKDIR [...] -o lr.png
      final test error vs learning rate, a line per parameterization, the
      mean over seeds (error bars: min and max).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wn_jax.study import figures  # noqa: E402
from wn_jax.study.figures import arm_label  # noqa: E402
from wn_jax.trainer import record_files  # noqa: E402


def read_run(workdir: str) -> tuple[dict, list[dict]]:
  """Returns (config dict, per-epoch records) of a workdir."""
  config, records = record_files.read_run(workdir, "test_error")
  epochs = [r for r in records if "test_error" in r]
  return config, epochs


def read_norms(workdir: str) -> tuple[dict, list[int], dict[str, list[float]]]:
  """(config, steps, {'<layer>/v_norm' or '<layer>/g_over_v_norm': values})."""
  config = record_files.read_config(workdir)
  records = [r for r in record_files.read_records(workdir)
             if any(k.endswith("/v_norm") for k in r)]
  if not records:
    raise ValueError(f"{workdir}/metrics.jsonl has no weight-norm records: is it a "
                     "WN run with config.log_norms_every_steps > 0?")
  keys = [k for k in records[0] if k.endswith("_norm")]
  return config, [r["step"] for r in records], {k: [r[k] for r in records] for k in keys}


def norms_summary(run: str, steps: list[int], series: dict[str, list[float]]) -> str:
  """One line: the growth of ||v|| and of g/||v|| from the first logged step
  to the last (mean over layers of each layer's ratio; when the first is
  the init, also from the second, to compare with runs logged without the
  init), and the largest relative drop of a layer's mean ||v|| between two
  consecutive logs."""
  v_norms = np.array([values for key, values in sorted(series.items())
                      if key.endswith("/v_norm")])  # [layers, logs]
  scales = np.array([values for key, values in sorted(series.items())
                     if key.endswith("/g_over_v_norm")])
  drops = np.maximum(0.0, -np.diff(v_norms, axis=1) / v_norms[:, :-1])

  def growth(first):
    return (f"steps {steps[first]} -> {steps[-1]}: mean ||v|| "
            f"x{np.mean(v_norms[:, -1] / v_norms[:, first]):.2f}, mean g/||v|| "
            f"x{np.mean(scales[:, -1] / scales[:, first]):.2f}")

  also = f" ({growth(1)})" if steps[0] == 0 and len(steps) > 2 else ""
  return (f"{run}: {growth(0)}{also}; largest drop of a layer's ||v|| between logs "
          f"{drops.max():.1e} (relative)")


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
    print(norms_summary(run, steps, series))
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
  figures.save_figure(fig, output, title)


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
  """Final test error vs learning rate, one line per parameterization.
  Prints the numbers as a markdown table (seeds separated by '/')."""
  table = lr_sweep_table(workdirs)
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for name, by_lr in sorted(table.items()):
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
  figures.save_figure(fig, output, title)
  print(lr_sweep_markdown(table))


def lr_sweep_markdown(table: dict[str, dict[float, list[float]]]) -> str:
  """Markdown table of lr_sweep_table: a row per parameterization, a column
  per learning rate, the seeds' final test errors separated by '/'."""
  all_lrs = sorted({lr for by_lr in table.values() for lr in by_lr})
  lines = ["| final test error | " + " | ".join(f"lr {lr:g}" for lr in all_lrs) + " |",
           "| --- " * (len(all_lrs) + 1) + "|"]
  for name, by_lr in sorted(table.items()):
    cells = [" / ".join(f"{100 * e:.2f}%" for e in by_lr.get(lr, [])) or "-" for lr in all_lrs]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# Sources that hold a data set's original pixels.
ORIGINAL_SOURCES = {"cifar10_python": "original", "cifar10_binary": "original"}


def data_label(config: dict) -> str:
  """What a run trained on: 'original', the tfds name or the folder's name,
  plus the size of a class-balanced training subset."""
  data = config.get("data", {})
  source = data.get("source", "")
  if source in ORIGINAL_SOURCES:
    label = ORIGINAL_SOURCES[source]
  elif source == "tfds":
    label = f"tfds {data.get('name', '')}"
  else:
    label = os.path.basename(os.path.normpath(data.get("folder", ""))) or source
  if data.get("train_subset"):
    label += f", {data['train_subset']} training images"
  return label


def run_label(config: dict, with_seed: bool, with_data: bool = False) -> str:
  model = config["model"]
  label = arm_label(config)
  if not model.get("data_init", True):
    label += " (no data init)"
  if model.get("init_order", "sequential") != "sequential":
    label += f" ({model['init_order']} init)"
  if with_data:
    label += f" [{data_label(config)}]"
  if with_seed:
    label += f" seed {config['seed']}"
  return label


def _differ_in_data(configs: Sequence[dict]) -> bool:
  return len({data_label(c) for c in configs}) > 1


# (metrics key, panel title, y label, scale): Figure 2's training error, plus
# the training loss and the test error.
CURVE_PANELS = (
    ("train_loss", "training loss (noise, dropout on)", "cross-entropy", 1.0),
    ("train_error", "training error (noise, dropout on)", "error (%)", 100.0),
    ("test_error", "test error", "error (%)", 100.0),
    ("test_loss", "test loss", "cross-entropy", 1.0),
)


# A loss panel whose positive values span more than this ratio is drawn on a
# log axis, so that a diverged run (loss 1e14) does not flatten the others.
LOG_LOSS_SPAN = 1e3


def loss_axis_scale(values: Sequence[float]) -> str:
  """'log' if the finite values are positive and max/min > LOG_LOSS_SPAN,
  else 'linear'. `values`: a panel's values, or just its lowest and highest."""
  finite = np.asarray(values, np.float64)
  finite = finite[np.isfinite(finite)]
  if finite.size == 0 or finite.min() <= 0:
    return "linear"
  return "log" if finite.max() / finite.min() > LOG_LOSS_SPAN else "linear"


def _curve_figure(output: str, title: str | None, draw, panel_suffix: str = "") -> None:
  """One panel per CURVE_PANELS entry; draw(ax, key, scale) fills each.
  The loss panel goes on a log axis when loss_axis_scale says so."""
  fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(16, 4.2))
  for ax, (key, name, ylabel, scale) in zip(axes, CURVE_PANELS):
    draw(ax, key, scale)
    if key.endswith("_loss"):
      ax.set_yscale(loss_axis_scale([ax.dataLim.y0, ax.dataLim.y1]))  # lines and bands
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(name + panel_suffix, fontsize=10)
    ax.grid(alpha=0.3)
  axes[-1].legend()
  figures.save_figure(fig, output, title)


def plot_runs(workdirs: Sequence[str], output: str, title: str | None = None) -> None:
  """Training loss, training error and test error vs epoch, a line per run."""
  runs = [read_run(w) for w in workdirs]
  with_seed = len({c["seed"] for c, _ in runs}) > 1
  with_data = _differ_in_data([c for c, _ in runs])
  colors = [f"C{i % 10}" for i in range(len(runs))]

  def draw(ax, key, scale):
    for (config, epochs), color in zip(runs, colors):
      ax.plot([r["epoch"] for r in epochs], [scale * r[key] for r in epochs],
              label=run_label(config, with_seed, with_data), color=color)

  _curve_figure(output, title, draw)


def group_runs(workdirs: Sequence[str]) -> dict[str, list[list[dict]]]:
  """{label without seed: [per-epoch records of each run]}, in first-seen
  order; the label names the data when the runs differ in it."""
  runs = [read_run(workdir) for workdir in workdirs]
  with_data = _differ_in_data([config for config, _ in runs])
  grouped = figures.group_runs(
      runs, lambda run: run_label(run[0], with_seed=False, with_data=with_data))
  return {label: [epochs for _, epochs in members] for label, members in grouped.items()}


def plot_runs_mean(workdirs: Sequence[str], output: str, title: str | None = None) -> None:
  """The panels of plot_runs with one line per group (group_runs): the mean
  over its runs, band = min..max. Epochs beyond a group's shortest run are
  cut. Prints the numbers as a markdown table (mean_table)."""
  groups = group_runs(workdirs)
  num_epochs = {label: min(len(epochs) for epochs in runs) for label, runs in groups.items()}
  num_runs = {label: f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
              for label, runs in groups.items()}

  def draw(ax, key, scale):
    for i, (label, runs) in enumerate(groups.items()):
      x, values = figures.stack([([r["epoch"] for r in epochs], [r[key] for r in epochs])
                                 for epochs in runs])
      values = scale * values
      ax.plot(x, values.mean(0), label=f"{label} ({num_runs[label]})", color=f"C{i % 10}")
      ax.fill_between(x, values.min(0), values.max(0), color=f"C{i % 10}", alpha=0.2)

  _curve_figure(output, title, draw, panel_suffix=": mean, band min..max")
  print(mean_table(groups, num_epochs))
  print(test_loss_table(groups, num_epochs))


def mean_table(groups: dict[str, list[list[dict]]], num_epochs: dict[str, int]) -> str:
  """Markdown table: per group, the training error after the first and the
  last epoch and the final test error, each as mean (min..max) over runs."""

  def cell(runs, epoch_index, key):
    values = 100 * np.array([epochs[epoch_index][key] for epochs in runs])
    if len(values) == 1:
      return f"{values[0]:.2f}%"
    return f"{values.mean():.2f}% ({values.min():.2f}..{values.max():.2f})"

  last = {label: runs[0][num_epochs[label] - 1]["epoch"] for label, runs in groups.items()}
  lines = ["| run | runs | training error, epoch 1 | training error, last epoch | "
           "test error, last epoch | test error of each run |",
           "| --- | --- | --- | --- | --- | --- |"]
  for label, runs in groups.items():
    n = num_epochs[label] - 1
    each = ", ".join(f"{100 * epochs[n]['test_error']:.2f}" for epochs in runs)
    lines.append(f"| {label} | {len(runs)} | {cell(runs, 0, 'train_error')} | "
                 f"{cell(runs, n, 'train_error')} | {cell(runs, n, 'test_error')} | "
                 f"{each} (epoch {last[label]:g}) |")
  return "\n".join(lines)


def test_loss_table(groups: dict[str, list[list[dict]]], num_epochs: dict[str, int]) -> str:
  """Markdown table of overfitting: per group, each run's lowest test loss
  and its epoch, and the test loss after the last epoch, as mean (min..max)
  over runs, and the rise from the lowest to the last."""

  def cell(values, digits=3):
    values = np.asarray(values)
    if len(values) == 1:
      return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ({values.min():.{digits}f}..{values.max():.{digits}f})"

  lines = ["| run | runs | lowest test loss | at epoch | test loss, last epoch | rise |",
           "| --- | --- | --- | --- | --- | --- |"]
  for label, runs in groups.items():
    losses = [[r["test_loss"] for r in epochs[:num_epochs[label]]] for epochs in runs]
    lowest = [int(np.argmin(run)) for run in losses]
    best = [run[i] for run, i in zip(losses, lowest)]
    epochs_at = ", ".join(f"{runs[k][i]['epoch']:g}" for k, i in enumerate(lowest))
    last = [run[-1] for run in losses]
    lines.append(f"| {label} | {len(runs)} | {cell(best)} | {epochs_at} | {cell(last)} | "
                 f"{cell(np.subtract(last, best))} |")
  return "\n".join(lines)


PLOTS = {"curves": plot_runs, "curves_mean": plot_runs_mean, "norms": plot_norms,
         "lr_sweep": plot_lr_sweep}


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
