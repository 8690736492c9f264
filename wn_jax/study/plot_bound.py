"""Figure 3 in the manner of the paper: the test bound against training epochs.

  python -m wn_jax.study.plot_bound WORKDIR [WORKDIR ...] -o bound.png

For runs of a latent-variable task (the VAE), one line per
parameterization, the mean over its runs (seeds) with a band of +- one
standard error (Figure 3's error bars); left: the bound on the fixed test
subset every `eval_every_steps` (the early-training curve), right: on the
whole test set after each epoch, with the raw and (dashed) the averaged
parameters. Prints a markdown table of the per-epoch numbers (mean, the
spread over seeds, the paired differences to the first group) and the
final importance-weighted bounds; with `--paper figure4`, also ours beside
the paper's values and where each arm first rises above -120 nats.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wn_jax.study import figures  # noqa: E402
from wn_jax.study.figures import arm_label  # noqa: E402
from wn_jax.trainer import record_files  # noqa: E402


def read_bound_run(workdir: str) -> dict:
  """A run's config and records: {'config', 'subset' [(epoch, record)],
  'epochs' [record], 'final' record or None}."""
  config, records = record_files.read_run(workdir, "test_elbo")
  epochs = [r for r in records if "test_elbo" in r]
  steps_per_epoch = epochs[0]["step"] / epochs[0]["epoch"]
  subset = [(r["step"] / steps_per_epoch, r) for r in records if "subset_test_elbo" in r]
  finals = [r for r in records if "final" in r]
  return {"config": config, "subset": subset, "epochs": epochs,
          "final": finals[-1] if finals else None}


def group_by_parameterization(workdirs: Sequence[str]) -> dict[str, list[dict]]:
  """{arm: its runs (`read_bound_run`), by seed}."""
  return figures.group_runs((read_bound_run(w) for w in workdirs),
                            lambda run: arm_label(run["config"]),
                            seed=lambda run: run["config"]["seed"])


def _series(runs: list[dict], part: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """x [T] and values [runs, T], cut to the shortest run."""
  if part == "subset":
    return figures.stack([([epoch for epoch, _ in run["subset"]],
                           [r[key] for _, r in run["subset"]]) for run in runs])
  return figures.stack([([r["epoch"] for r in run["epochs"]], [r[key] for r in run["epochs"]])
                        for run in runs])


mean_and_standard_error = figures.mean_and_standard_error


# The paper's Figure 4 (DRAW on MNIST, test bound in nats per image), read off
# the figure to +-0.5 nat (docs/DRAW.md): WN crosses -120 at about epoch 5,
# normal at about epoch 37; both end unconverged at 100 epochs.
PAPER_CURVES = {
    "figure4": {
        "wn": ((5, -118.0), (10, -102.4), (20, -93.7), (30, -90.5), (40, -88.6),
               (50, -87.6), (60, -86.7), (70, -86.2), (80, -85.7), (90, -85.4),
               (100, -85.1)),
        "normal": ((37, -120.0), (40, -115.0), (50, -101.6), (60, -95.4), (70, -93.2),
                   (80, -91.3), (90, -90.7), (100, -89.6)),
    },
}
# The paper's axes of each figure: (x range, y range).
PAPER_AXES = {"figure4": ((0, 100), (-120, -80))}


def plot_bound(workdirs: Sequence[str], output: str, title: str | None = None,
               paper: str | None = None, table_epochs: Sequence[int] | None = None) -> str:
  """Draws the figure into `output`; returns the markdown table.

  `paper` ('figure4'): overlays the paper's curve of each arm (black marks)
  and adds a third panel on the paper's own axes (Figure 4: epochs 0-100,
  -120 to -80 nats). `table_epochs`: the table's rows at these epochs only.
  """
  groups = group_by_parameterization(workdirs)
  if paper is not None and paper not in PAPER_CURVES:
    raise ValueError(f"paper must be one of {sorted(PAPER_CURVES)}, got {paper!r}.")
  panels = 3 if paper else 2
  fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
  left, right = axes[0], axes[1]
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
  if paper:
    _draw_paper(axes[2], right, groups, paper)
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  figures.save_figure(fig, output, title)
  return bound_table(groups, table_epochs)


def _draw_paper(zoom, right, groups: dict[str, list[dict]], paper: str) -> None:
  """The paper's curves on the whole-test-set panel and on `zoom`, which
  shows our runs on the paper's axes."""
  markers = {"wn": "s", "normal": "^"}
  for i, (name, runs) in enumerate(groups.items()):
    x, values = _series(runs, "epochs", "test_elbo")
    mean, _ = mean_and_standard_error(values)
    zoom.plot(x, mean, color=f"C{i % 10}", marker="o", markersize=3,
              label=f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
  for name, points in PAPER_CURVES[paper].items():
    px, py = zip(*points)
    for ax in (right, zoom):
      ax.plot(px, py, color="black", linestyle=":", marker=markers.get(name, "x"),
              markersize=4, label=f"paper: {name}")
  (x0, x1), (y0, y1) = PAPER_AXES[paper]
  zoom.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="training epochs",
           ylabel="test bound (nats per image)", title=f"the paper's axes ({paper})")


def bound_table(groups: dict[str, list[dict]], epochs: Sequence[int] | None = None) -> str:
  """Markdown: per parameterization and epoch, the test bound (raw and
  averaged) as mean, standard error and the per-seed values, with the KL
  where the runs record it; the paired difference to the first group (same
  seeds); the final IWAE bound. `epochs`: those rows only."""
  names = list(groups)
  with_kl = all("test_kl" in run["epochs"][0] for runs in groups.values() for run in runs)
  lines = ["| parameterization | epoch | seeds | test ELBO, raw: mean +- s.e. (per seed) | "
           + ("KL (per seed) | " if with_kl else "")
           + f"averaged | raw minus {names[0]}, paired (per seed) |",
           "| --- | --- | --- | --- | " + ("--- | " if with_kl else "") + "--- | --- |"]
  _, reference = _series(groups[names[0]], "epochs", "test_elbo")
  for name, runs in groups.items():
    x, raw = _series(runs, "epochs", "test_elbo")
    averaged = (_series(runs, "epochs", "ema_test_elbo")[1]
                if "ema_test_elbo" in runs[0]["epochs"][0] else None)
    kl = _series(runs, "epochs", "test_kl")[1] if with_kl else None
    for t, epoch in enumerate(x):
      if epochs is not None and epoch not in epochs:
        continue
      mean, spread = mean_and_standard_error(raw[:, t:t + 1])
      row = (f"| {name} | {epoch:g} | {raw.shape[0]} | {mean[0]:.2f} +- {spread[0]:.2f} "
             f"({', '.join(f'{v:.2f}' for v in raw[:, t])}) | ")
      if kl is not None:
        row += f"{', '.join(f'{v:.2f}' for v in kl[:, t])} | "
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


def paper_table(groups: dict[str, list[dict]], paper: str,
                epochs: Sequence[int] | None = None) -> str:
  """Markdown: ours beside the paper's, per epoch, then where each arm of
  ours first rises above the bottom of the paper's axes.

  Per epoch (default: 1 and the paper's listed epochs), for each arm the
  paper plots (named as our arm) its value read off the figure, 'below
  <bottom>' before the curve enters the axes; for each arm of ours the mean
  test bound over its seeds with the mean KL, or 'not reached'.
  """
  curves = {name: dict(points) for name, points in PAPER_CURVES[paper].items()}
  bottom = PAPER_AXES[paper][1][0]
  if epochs is None:
    epochs = sorted({1, *(e for points in curves.values() for e in points)})
  series = {}
  for name, runs in groups.items():
    x, bound = _series(runs, "epochs", "test_elbo")
    kl = _series(runs, "epochs", "test_kl")[1] if "test_kl" in runs[0]["epochs"][0] else None
    series[name] = {int(e): (bound[:, t].mean(), None if kl is None else kl[:, t].mean())
                    for t, e in enumerate(x)}
  header, rule = ["epoch"], ["---"]
  for name, runs in groups.items():
    if name in curves:
      header.append(f"paper: {name}")
    header.append(f"ours: {name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule * len(header)) + " |"]

  def ours(name, epoch):
    if epoch not in series[name]:
      return "not reached"
    bound, kl = series[name][epoch]
    return f"{bound:.2f}" + (f" (KL {kl:.2f})" if kl is not None else "")

  def theirs(name, epoch):
    if epoch in curves[name]:
      return f"{curves[name][epoch]:.1f}"
    return f"below {bottom:g}" if epoch < min(curves[name]) else "-"

  for epoch in epochs:
    cells = [str(epoch)]
    for name in groups:
      if name in curves:
        cells.append(theirs(name, epoch))
      cells.append(ours(name, epoch))
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  for name in groups:
    above = [e for e, (bound, _) in sorted(series[name].items()) if bound > bottom]
    last = max(series[name])
    lines.append(f"- {name}: above {bottom:g} from epoch {above[0]} "
                 f"({series[name][above[0]][0]:.2f})" if above else
                 f"- {name}: not above {bottom:g} by epoch {last} "
                 f"({series[name][last][0]:.2f})")
    if name in curves:
      lines[-1] += f"; the paper's from about epoch {min(curves[name])}"
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = figures.figure_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--paper", default=None, choices=sorted(PAPER_CURVES),
                      help="overlay the paper's curves and add a panel on its axes")
  parser.add_argument("--table-epochs", default=None,
                      help="comma-separated epochs: the table's rows at these only")
  args = parser.parse_args(argv)
  table_epochs = ([int(e) for e in args.table_epochs.split(",")] if args.table_epochs
                  else None)
  print(plot_bound(args.workdirs, args.output, args.title, args.paper, table_epochs))
  if args.paper:
    print()
    print(paper_table(group_by_parameterization(args.workdirs), args.paper, table_epochs))


if __name__ == "__main__":
  main()
