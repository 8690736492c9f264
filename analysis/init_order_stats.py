r"""Per-layer pre-activation statistics after the two data-dependent init orders.

    python analysis/init_order_stats.py --data /tmp/whitened.npz --width 96

Initialises `models.CifarNet` (paper network, `--parameterization`) with
`init_order='sequential'` and `'independent'` on the same init batch (the
first `--init-batch` images of the cache from `analysis/whitened_cifar.py`)
and the same keys, in training mode as `train.py` does. Then applies each
initialised network to the init batch with the same noise and dropout keys
and records every Normalized layer's output (its pre-activation: after the
normalization, before the nonlinearity). Prints a markdown table: per
layer, the mean over units of |mean| and the mean (min..max) over units of
the std (per unit over batch and positions). Sequential gives 0 and 1 by
construction; independent shows how far one un-initialised forward pass is
from that.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from wn_jax import models


def layer_statistics(model, variables, x, rngs=None, train=True):
  """(logits, rows): per Normalized layer in call order, (name, mean over
  units of |mean|, mean, min and max over units of the std), each unit's
  statistics over batch and positions of the layer's output. Training mode
  (with `rngs` for noise and dropout) or, with train=False, eval mode."""
  logits, state = model.apply(variables, x, train=train, rngs=rngs,
                              capture_intermediates=True,
                              mutable=["intermediates", "batch_stats"])
  inter = state["intermediates"]
  rows = []
  for name in sorted((k for k in inter if k.startswith("Normalized")),
                     key=lambda k: (k.startswith("NormalizedDense"), int(k.rsplit("_", 1)[1]))):
    y = np.asarray(inter[name]["__call__"][0], np.float64)
    axes = tuple(range(y.ndim - 1))
    mean, std = y.mean(axes), y.std(axes)
    rows.append((name, np.abs(mean).mean(), std.mean(), std.min(), std.max()))
  return logits, rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True)
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--init-batch", type=int, default=500)
  parser.add_argument("--parameterization", default="wn")
  args = parser.parse_args()
  x = jnp.asarray(np.load(args.data)["images"][:args.init_batch])
  keys = jax.random.split(jax.random.key(0), 3)
  rngs = {"params": keys[0], "noise": keys[1], "dropout": keys[2]}
  apply_rngs = {"noise": keys[1], "dropout": keys[2]}
  results = {}
  for order in ("sequential", "independent"):
    model = models.CifarNet(width=args.width, parameterization=args.parameterization,
                            init_order=order)
    variables = jax.jit(functools.partial(model.init, train=True))(rngs, x)
    _, results[order] = layer_statistics(model, variables, x, apply_rngs)
  print(f"{args.parameterization}, width {args.width}, init batch {len(x)} whitened "
        "CIFAR-10 training images, training mode (noise, dropout) with the init's keys\n")
  print("| layer | sequential: mean |mean| | sequential: std, mean (min..max) "
        "| independent: mean |mean| | independent: std, mean (min..max) |")
  print("|---|---:|---:|---:|---:|")
  for seq, ind in zip(results["sequential"], results["independent"]):
    print(f"| {seq[0]} | {seq[1]:.2g} | {seq[2]:.3f} ({seq[3]:.3f}..{seq[4]:.3f}) "
          f"| {ind[1]:.3g} | {ind[2]:.3g} ({ind[3]:.3g}..{ind[4]:.3g}) |")


if __name__ == "__main__":
  main()
