r"""Eval-time speed of folded (`wn_jax.fold`) vs unfolded models.

    python benchmarks/fold_eval_time.py --width 96 --batch 500 --reps 5

For each parameterization: `models.CifarNet` initialised on random input,
then `model.apply(variables, x, train=False)` jitted, against the folded
model's; the median wall time of `--reps` calls after one warm-up, the two
interleaved call by call, in alternating order (ABBA...), so that load from
other processes hits both alike; and XLA's own count of the compiled
functions' FLOPs and bytes accessed (`cost_analysis()`), which no load
changes.
"""

import argparse
import functools
import statistics
import time

import jax
import numpy as np

import wn_jax
from wn_jax import models


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--batch", type=int, default=500)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--parameterizations", default="normal,wn,bn,mobn,wn_mobn")
  args = parser.parse_args()
  x = jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 3))
  print(f"width {args.width}, batch {args.batch}, median of {args.reps} jitted calls, "
        f"backend {jax.default_backend()}\n")
  print("| parameterization | unfolded ms | folded ms | unfolded / folded "
        "| XLA GFLOP unfolded / folded | XLA GB accessed unfolded / folded | max |logit diff| |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for p in args.parameterizations.split(","):
    model = models.CifarNet(width=args.width, parameterization=p)
    rngs = {"params": jax.random.key(1), "noise": jax.random.key(2),
            "dropout": jax.random.key(3)}
    variables = jax.jit(functools.partial(model.init, train=True))(rngs, x[:100])
    folded_model, folded = wn_jax.fold(model, variables)
    fns = {"unfolded": (jax.jit(functools.partial(model.apply, train=False)), variables),
           "folded": (jax.jit(functools.partial(folded_model.apply, train=False)), folded)}
    outs = {k: jax.block_until_ready(f(v, x)) for k, (f, v) in fns.items()}
    cost = {}
    for k, (f, v) in fns.items():
      analysis = f.lower(v, x).compile().cost_analysis()
      analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
      cost[k] = (analysis.get("flops", float("nan")) / 1e9,
                 analysis.get("bytes accessed", float("nan")) / 1e9)
    times = {k: [] for k in fns}
    for rep in range(args.reps):
      for k in (("unfolded", "folded") if rep % 2 == 0 else ("folded", "unfolded")):
        f, v = fns[k]
        start = time.perf_counter()
        jax.block_until_ready(f(v, x))
        times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(t) * 1e3 for k, t in times.items()}
    diff = float(np.max(np.abs(np.asarray(outs["unfolded"]) - np.asarray(outs["folded"]))))
    print(f"| {p} | {med['unfolded']:.0f} | {med['folded']:.0f} "
          f"| {med['unfolded'] / med['folded']:.2f}x "
          f"| {cost['unfolded'][0]:.2f} / {cost['folded'][0]:.2f} "
          f"| {cost['unfolded'][1]:.2f} / {cost['folded'][1]:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
  main()
