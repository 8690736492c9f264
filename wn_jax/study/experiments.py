"""Launch the runs behind docs/RESULTS.md: one command per experiment.

  python -m wn_jax.study.experiments figure2 lr_sweep init_ablation \
      --root runs/claims --parallel 4 -- --config.data.source=folder \
      --config.data.folder=/path/to/cifar10-jpeg

Each run is `train.py --config configs/cifar.py:<parameterization>,quick`
with its learning rate and seed, recorded in a folder named
`<parameterization>_lr<lr>_s<seed>` (so experiments that need the same run
share it, and re-launching resumes or skips finished runs). Runs of one
parameterization (and data-init setting) train together as one sweep
program (`wn_jax.trainer.sweep`), at most `--max-members` per launch, in
`<root>/sweeps/<group>/` with each run's records in
`<root>/sweeps/<group>/<run name>/`; a group of one is a plain run in
`<root>/<run name>/`. `--max-members 1` launches every run on its own.
Arguments after `--` go to every launch (`--preset ''` drops the quick
preset: the paper's full schedule). The plots are then drawn from the
record folders by `python -m wn_jax.study.plot`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import itertools
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import NamedTuple

from wn_jax.trainer import record_files, sweep

# wn_jax/study/experiments.py -> the repository root (train.py beside wn_jax/).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    return sweep.run_name(self.parameterization, self.lr, self.seed, self.data_init)

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
    num_epochs = record_files.read_config(workdir)["num_epochs"]
    return any(r.get("epoch") == num_epochs for r in record_files.read_records(workdir))
  except (OSError, ValueError):
    return False


def record_dir(root: str, run: Run) -> str:
  """Where `run`'s records are: <root>/<name>, or inside a sweep's folder.

  A finished copy wins; for a run not yet started, <root>/<name>.
  """
  candidates = [os.path.join(root, run.name)] + sorted(
      glob.glob(os.path.join(glob.escape(root), "sweeps", "*", run.name)))
  return next((c for c in candidates if finished(c)), candidates[0])


def _sweep_workdir(root: str, group: Sequence[Run]) -> str:
  names = ",".join(sorted(run.name for run in group))
  digest = hashlib.sha1(names.encode()).hexdigest()[:8]
  return os.path.join(root, "sweeps",
                      f"{group[0].variant.replace(',', '_')}_x{len(group)}_{digest}")


def launch(group: Sequence[Run], root: str, extra_args: Sequence[str],
           preset: str = "quick") -> tuple[str, int]:
  """Trains the runs of `group` (one parameterization and data-init
  setting) as one program: a plain run for one, a sweep for more.

  Returns (label, exit code); the log is the workdir's train.log.
  """
  variant = ",".join(filter(None, [group[0].variant, preset]))
  command = [sys.executable, os.path.join(REPO_ROOT, "train.py"),
             "--config", os.path.join(REPO_ROOT, "configs", "cifar.py") + f":{variant}"]
  if len(group) == 1:
    workdir = os.path.join(root, group[0].name)
    command += [f"--config.optimizer.learning_rate={group[0].lr}",
                f"--config.seed={group[0].seed}"]
  else:
    workdir = _sweep_workdir(root, group)
    command += [f"--config.sweep.learning_rate={tuple(run.lr for run in group)}",
                f"--config.sweep.seed={tuple(run.seed for run in group)}"]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "train.log"), "a") as log:
    code = subprocess.call([*command, "--workdir", workdir, *extra_args],
                           stdout=log, stderr=subprocess.STDOUT)
  return " ".join(run.name for run in group), code


def groups(runs: Sequence[Run], max_members: int) -> list[list[Run]]:
  """Runs that can share one program, at most `max_members` at a time."""
  def key(run):
    return (run.parameterization, run.data_init)
  grouped = []
  for _, same in itertools.groupby(sorted(runs, key=key), key=key):
    same = list(same)
    grouped += [same[i:i + max_members] for i in range(0, len(same), max_members)]
  return grouped


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiments", nargs="+", choices=sorted(EXPERIMENTS))
  parser.add_argument("--root", required=True, help="Folder for the run workdirs.")
  parser.add_argument("--parallel", type=int, default=1, help="Launches at a time.")
  parser.add_argument("--max-members", type=int, default=8, metavar="N",
                      help="At most N runs per program (1: every run on its own).")
  parser.add_argument("--preset", default="quick",
                      help="Config variant added to every run ('' for the paper's "
                           "full schedule).")
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
  if args.max_members < 1:
    parser.error("--max-members must be at least 1")
  todo = [run for run in runs if not finished(record_dir(args.root, run))]
  for run in runs:
    if run not in todo:
      print(f"{run.name}: finished before", flush=True)
  failed = []
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = [pool.submit(launch, group, args.root, extra, args.preset)
               for group in groups(todo, args.max_members)]
    for future in concurrent.futures.as_completed(futures):
      name, code = future.result()
      print(f"{name}: {'done' if code == 0 else f'FAILED (exit {code})'}", flush=True)
      if code:
        failed.append(name)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
