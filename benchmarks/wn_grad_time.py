r"""Forward + backward time of the paper's network (training mode), jitted.

    python benchmarks/wn_grad_time.py --parameterization wn --width 96 --batch 100

Times `jax.grad` of the cross-entropy of `models.CifarNet` w.r.t. the params
(input noise and dropout on, as in training), median of `--reps` runs after
two warm-up calls, for each `--conv-weight-grad` mode; and XLA's count of
the compiled gradient (FLOPs, bytes accessed, HLO instructions, convolutions,
dots, fusions), which no load from other processes changes: two versions of
the code that print the same counts compile to the same program size.
"""

import argparse
import collections
import functools
import re
import statistics
import time

import jax
import optax

from wn_jax import models


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--parameterization", default="wn")
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--conv-weight-grad", default="per_tap,xla")
  args = parser.parse_args()
  x = jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 3))
  labels = jax.random.randint(jax.random.key(1), (args.batch,), 0, 10)
  for mode in args.conv_weight_grad.split(","):
    model = models.CifarNet(width=args.width, parameterization=args.parameterization,
                            conv_weight_grad=mode)
    rngs = {"params": jax.random.key(2), "noise": jax.random.key(3),
            "dropout": jax.random.key(4)}
    variables = jax.jit(functools.partial(model.init, train=True))(rngs, x)
    params, state = variables["params"], {k: v for k, v in variables.items()
                                          if k != "params"}

    @jax.jit
    def grad(params, x, labels, model=model, state=state):
      def loss(params):
        logits, _ = model.apply({"params": params, **state}, x, train=True,
                                rngs={"noise": jax.random.key(5),
                                      "dropout": jax.random.key(6)},
                                mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return jax.grad(loss)(params)

    compiled = grad.lower(params, x, labels).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", compiled.as_text()))
    print(f"compiled gradient: {cost['flops']:.6e} FLOPs, {cost['bytes accessed']:.6e} "
          f"bytes accessed, {sum(ops.values())} instructions ({ops['convolution']} "
          f"convolution, {ops['dot']} dot, {ops['fusion']} fusion)", flush=True)
    for _ in range(2):
      jax.block_until_ready(grad(params, x, labels))
    times = []
    for _ in range(args.reps):
      start = time.perf_counter()
      jax.block_until_ready(grad(params, x, labels))
      times.append(time.perf_counter() - start)
    print(f"{args.parameterization} width {args.width} batch {args.batch} "
          f"conv_weight_grad={mode}: median {statistics.median(times) * 1e3:.0f} ms "
          f"(min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}, {args.reps} runs)",
          flush=True)


if __name__ == "__main__":
  main()
