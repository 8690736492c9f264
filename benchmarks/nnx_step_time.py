r"""The NNX train step against the Linen one: same config, same loop step.

    python benchmarks/nnx_step_time.py                      # quick preset, wn
    python benchmarks/nnx_step_time.py --variant wn_mobn --width 96 --reps 20

Both steps are `wn_jax.trainer.steps.train_step`, jitted with the state donated,
on random 32x32x3 input: once with the Linen `models.CifarNet` of `configs/cifar.py:<variant>`, once with its NNX twin
`wn_jax.models.functional.FunctionalCifarNet.like(...)` (`nnx.merge` of the
split graph with the state inside the step). The two steps run interleaved
(rep 1 of each, then rep 2, ...), so drifting load from other processes
hits both alike; reported: median and min wall time per step, blocking on
the metrics every step, and the ratio NNX / Linen of the medians, plus
XLA's count of FLOPs and bytes accessed of both compiled steps.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import cifar  # noqa: E402
from wn_jax.models.functional import FunctionalCifarNet  # noqa: E402
from wn_jax.tasks import classification  # noqa: E402
from wn_jax.trainer import steps

NUM_CLASSES = 10
STEPS_PER_EPOCH = 500


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="wn", help="configs/cifar.py variant")
  parser.add_argument("--width", type=int, default=16, help="16: the quick preset")
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--reps", type=int, default=12)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", metavar="PATH", help="write the raw numbers here")
  return parser.parse_args(argv)


def _compiled_step(config, model, images, labels):
  optimizer = functools.partial(classification.create_optimizer, config, STEPS_PER_EPOCH)
  learning_rate = jnp.float32(config.optimizer.learning_rate)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  bound = dict(task=classification, config=config, model=model, optimizer=optimizer)
  state = jax.jit(functools.partial(steps.initialize, **bound))(
      {"images": images}, init_key, jnp.float32(config.model.init_scale), learning_rate)
  step = jax.jit(functools.partial(steps.train_step, **bound), donate_argnums=0)
  compiled = step.lower(state, {"images": images, "labels": labels}, step_key,
                        learning_rate).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return compiled, state, (step_key, learning_rate), cost


def main(argv=None) -> dict:
  args = parse_args(argv)
  config = cifar.get_config(f"{args.variant},quick")
  config.model.width = args.width
  config.batch_size = args.batch_size
  linen_model = classification.create_model(config, {"num_classes": NUM_CLASSES})
  models = {"linen": linen_model, "nnx": FunctionalCifarNet.like(linen_model)}
  images = jax.random.normal(jax.random.key(0), (args.batch_size, 32, 32, 3))
  labels = jax.random.randint(jax.random.key(1), (args.batch_size,), 0, NUM_CLASSES)
  compiled, states, extra, costs, times = {}, {}, {}, {}, {}
  for api, model in models.items():
    compiled[api], states[api], extra[api], costs[api] = _compiled_step(
        config, model, images, labels)
    times[api] = []
  for rep in range(args.warmup + args.reps):
    for api in models:
      start = time.perf_counter()
      states[api], metrics = compiled[api](states[api], {"images": images, "labels": labels},
                                           *extra[api])
      jax.block_until_ready(metrics)
      if rep >= args.warmup:
        times[api].append(time.perf_counter() - start)
  result = {"variant": args.variant, "width": args.width, "batch_size": args.batch_size,
            "reps": args.reps, "load_average": os.getloadavg()[0]}
  for api in models:
    result[api] = {"median_ms": 1e3 * statistics.median(times[api]),
                   "min_ms": 1e3 * min(times[api]),
                   "times_ms": [1e3 * t for t in times[api]],
                   "xla_flops": costs[api].get("flops"),
                   "xla_bytes_accessed": costs[api].get("bytes accessed")}
  result["ratio_nnx_over_linen"] = result["nnx"]["median_ms"] / result["linen"]["median_ms"]
  result["ratio_of_min"] = result["nnx"]["min_ms"] / result["linen"]["min_ms"]
  print("| api | median ms | min ms | XLA FLOPs | XLA bytes |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for api in models:
    r = result[api]
    print(f"| {api} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['xla_flops']:.6e} "
          f"| {r['xla_bytes_accessed']:.6e} |")
  print(f"NNX / Linen: {result['ratio_nnx_over_linen']:.3f} (medians), "
        f"{result['ratio_of_min']:.3f} (minima); 1-minute load {result['load_average']:.1f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
