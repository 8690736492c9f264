r"""What the Atari DQN (configs/atari_dqn.py) costs per agent step, and what
the paper's 200 epochs would cost at that rate.

    python benchmarks/atari_step_time.py                      # wn, Space Invaders
    python benchmarks/atari_step_time.py --parameterization normal --updates 200
    python benchmarks/atari_step_time.py --json out/atari.json

Three timings, each the median over `--reps` timed calls after a warm-up:
- emulator: one agent step of the host function alone (restore the
  serialized emulator, 4 frames, serialize), no JAX;
- update: one jitted training step of the task (4 agent steps, each a host
  call, the acting forward pass and a replay write, then one Adamax step on
  a minibatch of `--batch-size`), `steps.train_step` with the state donated
  as the trainer runs it, timed over blocks of `--updates` steps;
- test: agent steps of the test epoch (`eval_sums` with a budget of
  `--test-steps` steps, one stream, epsilon 0.05).
The replay is the config's at `--replay-capacity` (the paper's 1,000,000
needs 7 GB; the timing does not depend on it) after `--replay-start`
random steps. The cost of the paper's run is 200 x (250,000 training agent
steps at the update rate + 125,000 test steps at the test rate).

Prints a header (machine, versions, command) and a markdown table;
`--json PATH` also writes every raw number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from configs import atari_dqn  # noqa: E402
from wn_jax.data import atari  # noqa: E402
from wn_jax.tasks import dqn  # noqa: E402
from wn_jax.trainer import steps

PAPER_EPOCHS, PAPER_TRAIN_STEPS, PAPER_TEST_STEPS = 200, 250_000, 125_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--parameterization", choices=("normal", "wn", "bn"), default="wn")
  parser.add_argument("--game", default="space_invaders", help="ale-py's ROM id")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--replay-capacity", type=int, default=20_000)
  parser.add_argument("--replay-start", type=int, default=2_000)
  parser.add_argument("--updates", type=int, default=50, help="updates per timed block")
  parser.add_argument("--test-steps", type=int, default=500, help="agent steps per timed test")
  parser.add_argument("--emulator-steps", type=int, default=2_000)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--json", metavar="PATH", help="write the raw numbers here")
  args = parser.parse_args(argv)
  for name in ("batch_size", "replay_capacity", "replay_start", "updates", "test_steps",
               "emulator_steps", "reps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be positive")
  if args.replay_start > args.replay_capacity:
    parser.error("--replay-start must not exceed --replay-capacity")
  return args


def make_config(args: argparse.Namespace):
  config = atari_dqn.get_config(args.parameterization)
  config.env.name = args.game
  config.batch_size = args.batch_size
  config.dqn.replay_capacity = args.replay_capacity
  config.dqn.replay_start = args.replay_start
  config.dqn.init_states = min(500, args.replay_start)
  config.dqn.test_env_steps = args.test_steps
  return config


def time_emulator(args: argparse.Namespace) -> list[float]:
  """Seconds per agent step of the host function, per rep."""
  env = atari.AtariEnvironment(args.game)
  emulator = atari._emulator(env.game, env.frame_skip)  # noqa: SLF001
  actions = np.random.default_rng(0).integers(0, env.num_actions, args.emulator_steps)
  state, size, _, _ = emulator.reset(np.int32(0))
  times = []
  for _ in range(args.reps):
    start = time.perf_counter()
    for action in actions:
      state, size, *_ = emulator.step(state, size, np.int32(action), np.int32(0),
                                      np.bool_(False))
    times.append((time.perf_counter() - start) / args.emulator_steps)
  return times


def time_updates_and_test(args: argparse.Namespace) -> tuple[list[float], list[float], float]:
  """Seconds per update and per test agent step, per rep; init seconds."""
  config = make_config(args)
  data = dqn.load_data(config)
  model = dqn.create_model(config, data.info)
  optimizer = lambda lr: dqn.create_optimizer(config, 1, lr)  # noqa: E731
  kwargs = dict(task=dqn, config=config, model=model, optimizer=optimizer)
  start = time.perf_counter()
  init = jax.jit(lambda key: steps.initialize({}, key, jnp.float32(1),
                                              jnp.float32(config.optimizer.learning_rate),
                                              **kwargs))
  state = jax.block_until_ready(init(jax.random.key(0)))
  init_s = time.perf_counter() - start
  step = jax.jit(lambda s, k: steps.train_step(s, {}, k,
                                               jnp.float32(config.optimizer.learning_rate),
                                               **kwargs), donate_argnums=0)
  key = jax.random.key(1)
  state, metrics = step(state, key)  # compile
  jax.block_until_ready(metrics)
  update_times = []
  for _ in range(args.reps):
    start = time.perf_counter()
    for _ in range(args.updates):
      state, metrics = step(state, key)
    jax.block_until_ready(metrics)
    update_times.append((time.perf_counter() - start) / args.updates)
  evaluate = jax.jit(lambda s, k: steps.eval_step(
      s, {"episode": jnp.zeros(1, jnp.int32)}, jnp.ones(1), k, task=dqn, config=config,
      model=model))
  jax.block_until_ready(evaluate(state, key))  # compile
  test_times = []
  for _ in range(args.reps):
    start = time.perf_counter()
    jax.block_until_ready(evaluate(state, key))
    test_times.append((time.perf_counter() - start) / args.test_steps)
  return update_times, test_times, init_s


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  import ale_py  # noqa: PLC0415
  print(f"# Atari DQN step time\n\ncommand: `python {shlex.join(sys.argv)}`  ")
  print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, backend "
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}); Python "
        f"{platform.python_version()}, jax {jax.__version__}, ale-py {ale_py.__version__}\n")
  emulator = time_emulator(args)
  updates, tests, init_s = time_updates_and_test(args)
  update_s, test_s, emulator_s = (statistics.median(x) for x in (updates, tests, emulator))
  agent_steps_per_s = 4 / update_s
  paper_s = PAPER_EPOCHS * (PAPER_TRAIN_STEPS / agent_steps_per_s
                            + PAPER_TEST_STEPS * test_s)
  rows = [("emulator alone, agent steps/s", 1 / emulator_s),
          ("training: updates/s (4 agent steps + minibatch "
           f"{args.batch_size})", 1 / update_s),
          ("training: agent steps/s", agent_steps_per_s),
          ("training: frames/s", 4 * agent_steps_per_s),
          ("test: agent steps/s", 1 / test_s),
          (f"init ({args.replay_start} random steps + data init, with compile), s", init_s),
          ("the paper's 200 epochs (50M + 25M agent steps), hours", paper_s / 3600)]
  print("| what | value |\n| --- | --- |")
  for name, value in rows:
    print(f"| {name} | {value:,.1f} |")
  result = {"args": vars(args), "emulator_s": emulator, "update_s": updates, "test_s": tests,
            "init_s": init_s, "paper_hours": paper_s / 3600,
            "backend": jax.default_backend(), "jax": jax.__version__}
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
