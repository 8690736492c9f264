"""Times `ops.conv2d` with weight_grad="xla" vs "per_tap".

    python benchmarks/conv_weight_grad.py                # the 3 default convs
    python benchmarks/conv_weight_grad.py --batch 32 --reps 9
    python benchmarks/conv_weight_grad.py --size 32 --channels 96 --kernel 3

For each conv (stride 1, SAME, float32, NHWC/HWIO) it times, jitted, with
`block_until_ready` after a warm-up call, the median of `--reps` runs of:
the forward conv, the input gradient alone, the kernel gradient alone, and
the full VJP (forward + both gradients). The two modes are run alternately
so that load from other processes hits both alike. Prints a markdown table.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wn_jax import ops  # noqa: E402

MODES = ("xla", "per_tap")


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--size", type=int, nargs="+", default=[32, 16, 32],
                      help="input height = width, one per conv")
  parser.add_argument("--channels", type=int, nargs="+", default=[96, 192, 96],
                      help="in = out features, one per conv")
  parser.add_argument("--kernel", type=int, nargs="+", default=[3, 3, 1],
                      help="kernel height = width, one per conv")
  parser.add_argument("--reps", type=int, default=5,
                      help="timed runs per measurement (median reported)")
  args = parser.parse_args()
  if not len(args.size) == len(args.channels) == len(args.kernel):
    parser.error("--size, --channels and --kernel need the same number of values")
  return args


def _programs(mode):
  """Jitted (x, kernel, dy) -> ... for each timed piece of work."""
  conv = lambda x, kernel: ops.conv2d(x, kernel, 1, "SAME", weight_grad=mode)

  def vjp(x, kernel, dy):
    y, pullback = jax.vjp(conv, x, kernel)
    return (y, *pullback(dy))

  # XLA drops the outputs a program does not return (the forward conv in
  # the gradient-only programs), so each times only its own work.
  return {
      "forward": jax.jit(lambda x, kernel, dy: conv(x, kernel)),
      "input grad": jax.jit(lambda x, kernel, dy: vjp(x, kernel, dy)[1]),
      "weight grad": jax.jit(lambda x, kernel, dy: vjp(x, kernel, dy)[2]),
      "fwd + both grads": jax.jit(vjp),
  }


def _time_ms(fn, args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) * 1e3


def bench_conv(batch, size, channels, kernel_size, reps):
  """Returns [(op, median ms per mode)] and the kernel-gradient mismatch."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, channels)), jnp.float32)
  kernel = jnp.asarray(
      rng.standard_normal((kernel_size, kernel_size, channels, channels))
      / np.sqrt(kernel_size * kernel_size * channels), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((batch, size, size, channels)), jnp.float32)
  args = (x, kernel, dy)

  programs = {mode: _programs(mode) for mode in MODES}
  grads = {mode: programs[mode]["weight grad"](*args) for mode in MODES}  # warm-up
  mismatch = float(jnp.max(jnp.abs(grads["per_tap"] - grads["xla"]))
                   / jnp.max(jnp.abs(grads["xla"])))

  rows = []
  for op in programs["xla"]:
    for mode in MODES:
      jax.block_until_ready(programs[mode][op](*args))  # compile + warm-up
    times = {mode: [] for mode in MODES}
    for _ in range(reps):
      for mode in MODES:
        times[mode].append(_time_ms(programs[mode][op], args))
    rows.append((op, {mode: statistics.median(t) for mode, t in times.items()}))
  return rows, mismatch


def _ms(ms):
  return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def main():
  args = _parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"float32, median of {args.reps} runs\n")
  print("| conv | op | xla (ms) | per_tap (ms) | xla / per_tap |")
  print("|---|---|---:|---:|---:|")
  for size, channels, kernel_size in zip(args.size, args.channels, args.kernel):
    name = (f"{kernel_size}x{kernel_size} {channels}->{channels}, "
            f"{size}x{size}, batch {args.batch}")
    rows, mismatch = bench_conv(args.batch, size, channels, kernel_size, args.reps)
    for op, ms in rows:
      print(f"| {name} | {op} | {_ms(ms['xla'])} | {_ms(ms['per_tap'])} | "
            f"{ms['xla'] / ms['per_tap']:.2f}x |", flush=True)
    # Default precision: float32 on CPU; on GPUs TF32 (10-bit mantissa).
    if mismatch > (1e-4 if jax.default_backend() == "cpu" else 1e-2):
      raise AssertionError(f"{name}: per_tap kernel gradient differs from xla's "
                           f"by {mismatch:.1e} (relative to its max).")


if __name__ == "__main__":
  main()
