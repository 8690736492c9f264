"""Training curves of several runs, as the paper's Figure 2.

  python -m wn_jax.plot WORKDIR [WORKDIR ...] -o curves.png

Reads each workdir's metrics.jsonl and config.json and draws training error
(noise and dropout on) and test error (deterministic) against epoch, one
line per run, labelled by parameterization (and seed when runs differ in it).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import matplotlib

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
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(output, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("-o", "--output", required=True, help="PNG file to write.")
  parser.add_argument("--title", default=None)
  args = parser.parse_args(argv)
  plot_runs(args.workdirs, args.output, args.title)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
