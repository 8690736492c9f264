"""Figure 5 and Table 2 in the manner of the paper: DQN test returns per epoch.

  python -m wn_jax.study.plot_returns WORKDIR [WORKDIR ...] -o returns.png

One line per (parameterization, learning rate), the mean test return per
episode over its runs (seeds) with a band of +- one standard error; prints
a markdown table of each group's best (the paper's "maximum evaluation
score") and last test returns, mean +- s.e. and per seed, with the env
steps they were measured at. Runs are cut to the shortest of their group.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

from wn_jax.study import figures
from wn_jax.study.figures import mean_and_standard_error

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wn_jax.trainer import record_files  # noqa: E402


def read_return_run(workdir: str, max_epoch: int | None = None) -> dict:
  """{'config', 'epochs' [int], 'returns' [float]} of a DQN run's records
  (up to `max_epoch`, if given)."""
  config, records = record_files.read_run(workdir, "test_return")
  epochs = [r for r in records if "test_return" in r
            and (max_epoch is None or r["epoch"] <= max_epoch)]
  return {"config": config, "epochs": [r["epoch"] for r in epochs],
          "returns": [r["test_return"] for r in epochs]}


def group_name(config: dict) -> str:
  return (f"{config['model']['parameterization']}, lr "
          f"{config['optimizer']['learning_rate']:g}")


def group_runs(workdirs: Sequence[str], max_epoch: int | None = None
               ) -> dict[str, list[dict]]:
  return figures.group_runs((read_return_run(w, max_epoch) for w in workdirs),
                            lambda run: group_name(run["config"]),
                            seed=lambda run: run["config"]["seed"])


def _matrix(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Epochs [T] and returns [runs, T], cut to the shortest run."""
  return figures.stack([(run["epochs"], run["returns"]) for run in runs])


def env_steps_per_epoch(config: dict) -> int:
  return int(config["dqn"]["env_steps_per_epoch"])


def plot_returns(workdirs: Sequence[str], output: str, title: str | None = None,
                 max_epoch: int | None = None) -> str:
  """Draws the figure into `output` (epochs up to `max_epoch`, if given);
  returns the markdown table."""
  groups = group_runs(workdirs, max_epoch)
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for i, (name, runs) in enumerate(groups.items()):
    epochs, returns = _matrix(runs)
    mean, spread = mean_and_standard_error(returns)
    color = f"C{i % 10}"
    ax.plot(epochs, mean, color=color, marker=".",
            label=f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
    ax.fill_between(epochs, mean - spread, mean + spread, color=color, alpha=0.2)
  steps = env_steps_per_epoch(next(iter(groups.values()))[0]["config"])
  ax.set(xlabel=f"training epochs ({steps:,} env steps each)",
         ylabel="test return per episode")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title)
  figures.save_figure(fig, output)
  return returns_table(groups)


def returns_table(groups: dict[str, list[dict]]) -> str:
  """Markdown: per group, the best and the last test return per episode."""
  lines = ["| parameterization, lr | seeds | epochs (env steps) | best: mean +- s.e. (per seed) "
           "| last: mean +- s.e. (per seed) |", "| --- | --- | --- | --- | --- |"]
  for name, runs in groups.items():
    epochs, returns = _matrix(runs)
    steps = int(epochs[-1]) * env_steps_per_epoch(runs[0]["config"])
    cells = []
    for values in (returns.max(axis=1), returns[:, -1]):
      mean, spread = mean_and_standard_error(values[:, None])
      cells.append(f"{mean[0]:.1f} +- {spread[0]:.1f} "
                   f"({', '.join(f'{v:.1f}' for v in values)})")
    lines.append(f"| {name} | {len(runs)} | {int(epochs[-1])} ({steps:,}) | {cells[0]} | "
                 f"{cells[1]} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = figures.figure_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--max-epoch", type=int, default=None,
                      help="compare every run up to this epoch (runs stopped at different ones)")
  args = parser.parse_args(argv)
  print(plot_returns(args.workdirs, args.output, args.title, args.max_epoch))


if __name__ == "__main__":
  main()
