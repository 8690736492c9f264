r"""Many runs in one program: throughput against members per launch.

    python benchmarks/sweep_scaling.py --width 16 --members 1,2,4,8,16   # CPU
    python benchmarks/sweep_scaling.py --members 1,2,4,8,16 --dtype bfloat16

Times the jitted `steps.sweep_train_step` exactly as `train_and_evaluate`
calls it (state donated, data set on the device, each member its own batch
indices, keys and learning rate) for each number of members M, on random
32x32x3 data of `--train-size` images, after `--warmup` steps, median of
`--reps` (blocking on the metrics every step). Also times the bare
one-member `steps.train_step` (no vmap, no gather, no masking of
non-finite updates) as the baseline a plain run would have without the
sweep machinery.

Reported per M: step time, images/s per member (= batch / step time),
runs per hour (M members x the paper's 200 x 500 steps), and the speed-up
over running the M runs one after another (M * t_1 / t_M).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar  # noqa: E402
from wn_jax.tasks import classification  # noqa: E402
from wn_jax.trainer import placement, steps

PAPER_STEPS = 200 * 500  # 200 epochs of 500 batches of 100


def _median_time(fn, args, reps: int, warmup: int) -> float:
  state, *rest = args
  times = []
  for i in range(warmup + reps):
    start = time.perf_counter()
    state, metrics = fn(state, *rest)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_members(config, num_members: int, train_size: int, reps: int, warmup: int,
                 member_loop: str) -> float:
  """Median step time of a sweep of `num_members` members (seconds)."""
  mesh = placement.create_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  per_member = NamedSharding(mesh, PartitionSpec("members"))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((train_size, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, train_size), jnp.int32)
  steps_per_epoch = train_size // config.batch_size
  model = classification.create_model(config, {"num_classes": 10})
  optimizer = functools.partial(classification.create_optimizer, config, steps_per_epoch)
  seeds = jnp.arange(num_members)
  keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(seeds)
  learning_rates = jnp.full((num_members,), config.optimizer.learning_rate, jnp.float32)
  init_rows = jnp.asarray(np.stack([rng.permutation(train_size)[:config.init_batch_size]
                                    for _ in range(num_members)]), jnp.int32)
  bound = dict(task=classification, config=config, model=model, optimizer=optimizer)
  state = jax.jit(functools.partial(steps.sweep_init, member_loop=member_loop, **bound),
                  out_shardings=per_member)(
      {"images": images, "labels": labels}, init_rows, keys[:, 0], jnp.ones(num_members, jnp.float32), learning_rates,
      None)
  epoch_rows = jnp.asarray(np.stack([
      np.sort(rng.permutation(train_size)[:steps_per_epoch * config.batch_size]
              .reshape(steps_per_epoch, config.batch_size), axis=1)
      for _ in range(num_members)]), jnp.int32)
  step_fn = jax.jit(
      functools.partial(steps.sweep_train_step, steps_per_epoch=steps_per_epoch,
                        member_loop=member_loop, **bound),
      in_shardings=(per_member, replicated, per_member, per_member, per_member),
      out_shardings=(per_member, per_member), donate_argnums=0)
  return _median_time(step_fn, (state, {"images": images, "labels": labels}, epoch_rows,
                                keys[:, 1],
                                learning_rates), reps, warmup)


def time_bare_step(config, reps: int, warmup: int) -> float:
  """Median step time of the plain one-member `train_step` (seconds)."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((config.batch_size, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, config.batch_size), jnp.int32)
  init_batch = jnp.asarray(rng.standard_normal((config.init_batch_size, 32, 32, 3)),
                           jnp.float32)
  model = classification.create_model(config, {"num_classes": 10})
  optimizer = functools.partial(classification.create_optimizer, config, 500)
  learning_rate = jnp.float32(config.optimizer.learning_rate)
  bound = dict(task=classification, config=config, model=model, optimizer=optimizer)
  state = jax.jit(functools.partial(steps.initialize, **bound))(
      {"images": init_batch}, jax.random.key(0), jnp.float32(1.0), learning_rate)
  step_fn = jax.jit(functools.partial(steps.train_step, **bound), donate_argnums=0)
  return _median_time(step_fn, (state, {"images": images, "labels": labels},
                                jax.random.key(1), learning_rate),
                      reps, warmup)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--parameterization", default="wn")
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--dtype", default="float32", choices=tuple(classification.DTYPES))
  parser.add_argument("--members", default="1,2,4,8,16")
  parser.add_argument("--member-loop", default="auto", choices=steps.MEMBER_LOOPS)
  parser.add_argument("--train-size", type=int, default=2000)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  args = parser.parse_args()
  config = cifar.get_config(args.parameterization)
  config.model.width = args.width
  config.model.dtype = args.dtype
  config.init_batch_size = 100
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices "
        f"{jax.devices()}, {os.cpu_count()} host cores")
  print(f"command: python {' '.join(sys.argv)} (member loop {args.member_loop})\n")
  bare = time_bare_step(config, args.reps, args.warmup)
  times = {}
  print("| members | step ms | images/s per member | runs per hour (200 epochs) "
        "| speed-up over one at a time |")
  print("| --- | --- | --- | --- | --- |")
  for num_members in [int(m) for m in args.members.split(",")]:
    times[num_members] = time_members(config, num_members, args.train_size, args.reps,
                                      args.warmup, args.member_loop)
    t = times[num_members]
    t1 = times.get(1, t)
    print(f"| {num_members} | {t * 1e3:.1f} | {config.batch_size / t:.0f} "
          f"| {num_members * 3600 / (PAPER_STEPS * t):.2f} "
          f"| {num_members * t1 / t:.2f}x |", flush=True)
  print(f"\nbare one-member train_step (no sweep machinery): {bare * 1e3:.1f} ms; "
        f"one-member sweep step / bare step = {times.get(1, float('nan')) / bare:.3f}")


if __name__ == "__main__":
  main()
