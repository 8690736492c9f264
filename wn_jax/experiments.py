"""Launch the runs behind docs/RESULTS.md: one command per experiment.

  python -m wn_jax.experiments figure2 lr_sweep init_ablation \
      --root runs/claims --parallel 4 -- --config.data.source=folder \
      --config.data.folder=/path/to/cifar10-jpeg

Each run is `train.py --config configs/cifar.py:<parameterization>,quick`
with its learning rate and seed, in `<root>/<parameterization>_lr<lr>_s<seed>`
(so experiments that need the same run share it, and re-launching resumes or
skips finished runs). Arguments after `--` go to every run. The plots are
then drawn from the workdirs by `python -m wn_jax.plot`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import NamedTuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


class Run(NamedTuple):
  """One quick-preset training run; its workdir name and config variant are
  derived from these four fields."""
  parameterization: str
  lr: float
  seed: int
  data_init: bool = True

  @property
  def name(self) -> str:
    return (f"{self.parameterization}{'' if self.data_init else '_nodatainit'}"
            f"_lr{self.lr:g}_s{self.seed}")

  @property
  def variant(self) -> str:
    return self.parameterization + ("" if self.data_init else ",no_data_init")


EXPERIMENTS = {
    # Paper Figure 2 at CPU scale: all five parameterizations, two seeds.
    "figure2": [Run(p, 1e-3, s) for p in ("normal", "wn", "bn", "mobn", "wn_mobn")
                for s in (0, 1)],
    # Learning-rate robustness: final test error vs lr.
    "lr_sweep": [Run(p, lr, 0) for p in ("normal", "wn", "wn_mobn")
                 for lr in PAPER_LEARNING_RATES],
    # Data-dependent init vs g = ||v|| (and normal, in figure2).
    "init_ablation": [Run("wn", 1e-3, 0), Run("wn", 1e-3, 0, data_init=False),
                      Run("normal", 1e-3, 0)],
}


def finished(workdir: str) -> bool:
  """True if the run's metrics hold its last epoch."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      num_epochs = json.load(f)["num_epochs"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return any(json.loads(line).get("epoch") == num_epochs for line in f)
  except (OSError, ValueError):
    return False


def launch(run: Run, root: str, extra_args: Sequence[str]) -> tuple[str, int]:
  """Trains `run` in <root>/<run.name> unless it finished; (name, exit code)."""
  workdir = os.path.join(root, run.name)
  if finished(workdir):
    return run.name, 0
  os.makedirs(workdir, exist_ok=True)
  command = [sys.executable, os.path.join(REPO_ROOT, "train.py"),
             "--config", os.path.join(REPO_ROOT, "configs", "cifar.py") + f":{run.variant},quick",
             "--workdir", workdir, f"--config.optimizer.learning_rate={run.lr}",
             f"--config.seed={run.seed}", *extra_args]
  with open(os.path.join(workdir, "train.log"), "a") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  return run.name, code


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiments", nargs="+", choices=sorted(EXPERIMENTS))
  parser.add_argument("--root", required=True, help="Folder for the run workdirs.")
  parser.add_argument("--parallel", type=int, default=1, help="Runs at a time.")
  parser.add_argument("--parameterizations", nargs="+", metavar="NAME",
                      help="Launch only the runs of these parameterizations.")
  parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                      help="Launch each run with these seeds instead of its own "
                           "(e.g. `figure2 --seeds 2` adds a third seed).")
  args = parser.parse_args(argv)
  runs = list(dict.fromkeys(r for e in args.experiments for r in EXPERIMENTS[e]))
  if args.seeds:
    runs = list(dict.fromkeys(run._replace(seed=seed) for run in runs for seed in args.seeds))
  if args.parameterizations:
    known = {run.parameterization for run in runs}
    unknown = sorted(set(args.parameterizations) - known)
    if unknown:
      parser.error(f"no run of {unknown} in {args.experiments}; "
                   f"their parameterizations are {sorted(known)}")
    runs = [run for run in runs if run.parameterization in args.parameterizations]
  failed = []
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = [pool.submit(launch, run, args.root, extra) for run in runs]
    for future in concurrent.futures.as_completed(futures):
      name, code = future.result()
      print(f"{name}: {'done' if code == 0 else f'FAILED (exit {code})'}", flush=True)
      if code:
        failed.append(name)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
