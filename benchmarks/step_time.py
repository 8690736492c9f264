r"""What weight norm costs per training step: the paper's CIFAR-10 network.

    python benchmarks/step_time.py                      # all five, width 96
    python benchmarks/step_time.py --parameterizations normal,wn --reps 50
    python benchmarks/step_time.py --dtype bfloat16 --no-torch --json out.json

For each parameterization, `wn_jax.tasks.classification.create_model` (10 classes) with
`configs/cifar.py:<parameterization>` (plus `--width`, `--dtype`,
`--conv-weight-grad`) on random 32x32x3 input:

- step: `steps.train_step` jitted with `donate_argnums=0` and the same
  shardings as `train_and_evaluate`; median wall time over `--reps` steps
  after `--warmup`, blocking on the step's metrics each step. The
  parameterizations' steps run interleaved (rep 1 of each, then rep 2, ...)
  so that drifting load from other processes hits all of them alike; the
  ratio is to `normal` in the same run.
- compile: `lower(...)` plus `.compile()` of that step. On GPU the first
  parameterization's compiles also pay for conv autotuning that later ones
  reuse from XLA's in-process cache (seen: bf16 `normal` 17 s, the rest 4 s).
- init: the data-dependent init, `steps.initialize` jitted as in
  `train_and_evaluate`, on a `--init-batch-size` (500) batch. "first" is
  the work of the first call, timed in its parts (trace/lower + compile +
  first run, via `.lower().compile()`), "run" the median of later runs.
  For comparison, "fwd": one training-mode forward pass (`model.apply(...,
  train=True)`, jitted) on the same batch, its lower + compile and its run.
  The target is init first <= fwd compile + fwd run (plus a little), init
  run ~ fwd run. (`bn` has no data-dependent init, so XLA drops its
  forward pass from the init: its init run is only the random draws.)
- FLOP/s, two counts: "XLA" is `compiled.cost_analysis()['flops']` of the
  step (everything XLA counts, elementwise work included; on some backends
  absent); "analytic" is the conv/dense work only, from the layer shapes:
  forward = 2 * MACs, step = forward + weight gradient + input gradient =
  3 * forward minus the first layer's input gradient (never computed).
  "% peak" is the analytic FLOP/s over this machine's matmul peak, measured
  in the same run as a jitted `--matmul-size`^3 float32 matmul (also
  bfloat16 with `--dtype bfloat16`, and that peak is then used).
- torch (`--torch`, default on, if torch is importable): the same network
  in eager PyTorch (`benchmarks/torch_reference.py`), `normal` and `wn`
  (torch's `weight_norm` parametrization), Adam, timed the same way, on the
  GPU when JAX runs on one and torch sees CUDA, else on the CPU with
  `torch.set_num_threads(<all cores>)`.

Prints a header (machine, versions, command) and markdown tables;
`--json PATH` also writes every raw number.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from configs import cifar, common  # noqa: E402
from wn_jax.tasks import classification  # noqa: E402
from wn_jax.trainer import config_checks, steps

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CIFAR_TRAIN_SIZE = 50_000  # only sets the (irrelevant here) lr schedule


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--init-batch-size", type=int, default=500)
  parser.add_argument("--reps", type=int, default=20,
                      help="timed steps per parameterization (median reported)")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed steps after compiling")
  parser.add_argument("--parameterizations", default=",".join(common.PARAMETERIZATIONS))
  parser.add_argument("--conv-weight-grad", choices=classification.CONV_WEIGHT_GRADS,
                      default="auto", help="config.model.conv_weight_grad")
  parser.add_argument("--dtype", choices=tuple(classification.DTYPES), default="float32",
                      help="config.model.dtype (compute dtype)")
  parser.add_argument("--matmul-size", type=int, default=4096,
                      help="n of the n x n @ n x n matmul that measures the peak")
  parser.add_argument("--torch-compile", default="", metavar="MODE",
                      help="Also time the torch reference under torch.compile(mode=MODE), "
                           "e.g. max-autotune (TF32 allowed, fused Adam on CUDA).")
  parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                      help="also time the PyTorch reference (normal and wn)")
  parser.add_argument("--json", metavar="PATH", help="write the raw numbers here")
  args = parser.parse_args(argv)
  args.parameterizations = [p.strip() for p in args.parameterizations.split(",")
                            if p.strip()]
  unknown = [p for p in args.parameterizations if p not in common.PARAMETERIZATIONS]
  if unknown or not args.parameterizations:
    parser.error(f"--parameterizations: unknown {unknown}; choose from "
                 f"{','.join(common.PARAMETERIZATIONS)}")
  for name in ("width", "batch_size", "init_batch_size", "reps", "matmul_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be positive")
  if args.warmup < 0:
    parser.error("--warmup must be >= 0")
  if args.init_batch_size < 2:
    parser.error("--init-batch-size must be >= 2 (the init takes a std)")
  return args


# ---------------------------------------------------------------------------
# Machine description.


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.split(":")[0].strip() in ("model name", "Model", "cpu model"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def machine_info(argv: Sequence[str]) -> dict[str, Any]:
  devices = jax.devices()
  return {
      "cpu_model": _cpu_model(),
      "cpu_cores": os.cpu_count(),
      "usable_cores": _usable_cores(),
      "load_average_1min_at_start": os.getloadavg()[0],
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "optax": _version("optax"),
      "torch": _version("torch"),
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "command": " ".join(shlex.quote(a) for a in ["python", *argv]),
  }


# ---------------------------------------------------------------------------
# Timing helpers.


def _timed(fn, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def matmul_peak_flops(n: int, dtype: Any, reps: int, warmup: int) -> float:
  """FLOP/s of a jitted n x n @ n x n matmul (median over `reps`)."""
  key_a, key_b = jax.random.split(jax.random.key(1))
  a = jax.random.normal(key_a, (n, n), dtype)
  b = jax.random.normal(key_b, (n, n), dtype)
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  for _ in range(max(warmup, 1)):
    jax.block_until_ready(matmul(a, b))
  times = [_timed(matmul, a, b)[1] for _ in range(reps)]
  return 2 * n ** 3 / statistics.median(times)


def xla_flops(compiled: Any) -> float | None:
  """`compiled.cost_analysis()['flops']`, or None where the backend gives none.

  jax 0.4.x returned a list with one dict per program; newer jax (0.10
  here) returns the dict itself.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Some backends do not implement it.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if flops > 0 else None


def analytic_flops(model: Any, variables: Any) -> dict[str, float]:
  """Conv/dense FLOPs per example from the layer shapes (2 per multiply-add).

  Every conv/dense of the network is a submodule named 'linear' (see
  `wn_jax.layers.parameterization._parameterized`); its MACs are (output elements) x
  (kernel elements per output channel). Returns per-example 'forward' and
  'train_step' = forward + weight grad + input grad, where the first
  layer's input gradient (w.r.t. the images) is never computed.
  """
  def forward(variables, x):
    return model.apply(variables, x, train=False, mutable=["intermediates"],
                       capture_intermediates=lambda mdl, method: (
                           mdl.name == "linear" and method == "__call__"))

  x = jax.ShapeDtypeStruct((1, *IMAGE_SHAPE), jnp.float32)
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  _, captured = jax.eval_shape(forward, shapes, x)
  params = variables["params"]
  layer_macs = []  # in call order: flax keeps the order modules were created
  for path, outputs in _walk(captured["intermediates"]):
    node = params
    for name in path:
      node = node[name]
    kernel = node["v"] if "v" in node else node["kernel"]
    (y,) = outputs
    layer_macs.append(int(np.prod(y.shape)) * int(np.prod(kernel.shape[:-1])))
  forward_flops = 2.0 * sum(layer_macs)
  first_layer = 2.0 * layer_macs[0]
  return {"forward": forward_flops, "train_step": 3 * forward_flops - first_layer,
          "num_layers": len(layer_macs)}


def _walk(tree, path=()):
  """Yields (module path, outputs) for every captured '__call__'."""
  for key, value in tree.items():
    if key == "__call__":
      yield path, value
    else:
      yield from _walk(value, path + (key,))


# ---------------------------------------------------------------------------
# One parameterization: build, init, compile.


def _config(args: argparse.Namespace, parameterization: str):
  config = cifar.get_config(parameterization)
  config.model.width = args.width
  config.model.dtype = args.dtype
  config.model.conv_weight_grad = args.conv_weight_grad
  config.batch_size = args.batch_size
  config.init_batch_size = args.init_batch_size
  return config


def prepare(args: argparse.Namespace, parameterization: str, images: jax.Array,
            labels: jax.Array, init_batch: jax.Array) -> dict[str, Any]:
  """Inits (timed), compiles the forward pass and the step (timed)."""
  config = _config(args, parameterization)
  config_checks.validate_config(config, jax.device_count())
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  data_sharding = NamedSharding(mesh, PartitionSpec("data"))
  model = classification.create_model(config, {"num_classes": NUM_CLASSES})
  optimizer = functools.partial(classification.create_optimizer, config,
                                max(CIFAR_TRAIN_SIZE // config.batch_size, 1))
  learning_rate = jnp.float32(config.optimizer.learning_rate)
  init_scale = jnp.float32(config.model.init_scale)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  result: dict[str, Any] = {"parameterization": parameterization,
                            "conv_weight_grad": model.conv_weight_grad}

  # The data-dependent init, jitted as train_and_evaluate does.
  bound = dict(task=classification, config=config, model=model, optimizer=optimizer)
  init_fn = jax.jit(functools.partial(steps.initialize, **bound), out_shardings=replicated)
  state = _first_and_later_calls(result, "init", args, init_fn, {"images": init_batch},
                                 init_key,
                                 init_scale, learning_rate)
  result["init_first_s"] = (result["init_lower_s"] + result["init_xla_compile_s"]
                            + result["init_first_run_s"])

  # One training-mode forward pass on the same batch, for comparison.
  variables = {"params": state.params, **state.model_state}
  rngs = {"noise": jax.random.key(1), "dropout": jax.random.key(2)}
  forward = jax.jit(lambda variables, x, rngs: model.apply(
      variables, x, train=True, rngs=rngs, mutable=["batch_stats"]))
  _first_and_later_calls(result, "fwd", args, forward, variables, init_batch, rngs)
  result["fwd_compile_s"] = result["fwd_lower_s"] + result["fwd_xla_compile_s"]

  flops = analytic_flops(model, variables)
  result["analytic_forward_flops_per_example"] = flops["forward"]
  result["analytic_step_flops"] = flops["train_step"] * args.batch_size
  result["analytic_layers"] = flops["num_layers"]

  # The train step, jitted as train_and_evaluate does.
  step_fn = jax.jit(
      functools.partial(steps.train_step, **bound),
      in_shardings=(replicated, data_sharding, replicated, replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
  start = time.perf_counter()
  lowered = step_fn.lower(state, {"images": images, "labels": labels}, step_key,
                          learning_rate)
  result["step_lower_s"] = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  result["step_xla_compile_s"] = time.perf_counter() - start
  result["step_compile_s"] = result["step_lower_s"] + result["step_xla_compile_s"]
  result["xla_step_flops"] = xla_flops(compiled)
  result["images"] = jax.device_put(images, data_sharding)
  result["labels"] = jax.device_put(labels, data_sharding)
  result["step_key"] = step_key
  result["learning_rate"] = learning_rate
  result["state"] = state
  result["step_fn"] = compiled
  return result


def _first_and_later_calls(result, name, args, jitted, *call_args):
  """Times lower, compile, the first run and later runs of `jitted`.

  Lower + compile + first run is the work of the first call of `jitted`,
  split up; records `<name>_lower_s`, `_xla_compile_s`, `_first_run_s`,
  `_run_s` (median of later runs) and `_run_times_s`. Returns the output.
  """
  start = time.perf_counter()
  lowered = jitted.lower(*call_args)
  result[f"{name}_lower_s"] = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  result[f"{name}_xla_compile_s"] = time.perf_counter() - start
  out, result[f"{name}_first_run_s"] = _timed(compiled, *call_args)
  runs = [_timed(compiled, *call_args)[1] for _ in range(_few(args.reps))]
  result[f"{name}_run_s"] = statistics.median(runs)
  result[f"{name}_run_times_s"] = runs
  return out


def _few(reps: int) -> int:
  """Repeats of the (slower, secondary) init and forward runs."""
  return max(1, min(reps, 5))


def time_steps(prepared: list[dict[str, Any]], reps: int, warmup: int) -> None:
  """Runs every step `warmup + reps` times, interleaved; records the times."""
  for entry in prepared:
    entry["step_times_s"] = []
  for i in range(warmup + reps):
    for entry in prepared:
      start = time.perf_counter()
      entry["state"], metrics = entry["step_fn"](
          entry["state"], {"images": entry["images"], "labels": entry["labels"]},
          entry["step_key"], entry["learning_rate"])
      jax.block_until_ready(metrics)
      elapsed = time.perf_counter() - start
      if i >= warmup:
        entry["step_times_s"].append(elapsed)
      if not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(
            f"{entry['parameterization']}: non-finite loss at step {i}.")


# ---------------------------------------------------------------------------
# PyTorch reference.


def torch_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
  """Times the torch reference; returns (rows, note). No rows if unavailable."""
  try:
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference
  except ImportError as e:
    return [], (f"torch is not importable ({e}); skipped the PyTorch reference "
                "(pip install -e '.[bench]').")
  if jax.default_backend() == "cpu":
    device = "cpu"
  elif jax.default_backend() == "gpu" and torch.cuda.is_available():
    device = "cuda"
  else:
    return [], (f"JAX runs on {jax.default_backend()} but torch {torch.__version__} "
                "has no CUDA device; skipped the PyTorch reference.")
  threads = _usable_cores()
  torch.set_num_threads(threads)
  rows = []
  modes = [None] + ([args.torch_compile] if args.torch_compile else [])
  for mode in modes:
    for name, weight_norm in (("normal", False), ("wn", True)):
      timing = torch_reference.time_train_step(
          args.width, weight_norm, args.batch_size, args.reps, args.warmup,
          device=device, dtype=args.dtype, compile_mode=mode)
      rows.append({"parameterization": name if mode is None
                   else f"{name} (torch.compile {mode}, TF32, fused Adam)",
                   "device": device, **timing})
  device_name = (torch.cuda.get_device_name() if device == "cuda"
                 else f"CPU, {threads} threads")
  return rows, (f"torch {torch.__version__}, eager"
                f"{f' and compiled ({args.torch_compile})' if args.torch_compile else ''}, "
                f"{device_name}")


# ---------------------------------------------------------------------------
# Report.


def _fmt(value: float | None, digits: int = 1) -> str:
  return "n/a" if value is None or not np.isfinite(value) else f"{value:,.{digits}f}"


def _seconds(value: float) -> str:
  return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def render(report: dict[str, Any]) -> str:
  m, a = report["machine"], report["args"]
  lines = [
      "## Step time: the paper's CIFAR-10 network",
      "",
      f"- command: `{m['command']}`",
      f"- CPU: {m['cpu_model']}, {m['cpu_cores']} cores ({m['usable_cores']} usable),"
      f" 1-min load average at start {m['load_average_1min_at_start']:.2f}",
      f"- backend: {m['backend']}, device kind: {m['device_kind']} x {m['device_count']}",
      f"- python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']},"
      f" optax {m['optax']}, torch {m['torch']}",
      f"- width {a['width']}, batch {a['batch_size']}, dtype {a['dtype']}, "
      f"conv_weight_grad {a['conv_weight_grad']} -> "
      f"{report['rows'][0]['conv_weight_grad']}, median of {a['reps']} steps after "
      f"{a['warmup']} warm-up; init and fwd on {a['init_batch_size']} examples",
      "- matmul peak ({n}^3, jitted): {peaks}".format(
          n=a["matmul_size"],
          peaks=", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s"
                          for k, v in report["matmul_peak_flops"].items())),
      "",
      "| parameterization | step ms | images/s | vs normal | compile s | init first s "
      "| init run s | fwd compile s | fwd run s | GFLOP/s (XLA count) "
      "| GFLOP/s (analytic) | % of peak (analytic) |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in report["rows"]:
    lines.append(
        f"| {r['parameterization']} | {r['step_s'] * 1e3:,.2f} | {_fmt(r['images_per_s'])} "
        f"| {_fmt(r['vs_normal'], 3)}{'x' if r['vs_normal'] else ''} "
        f"| {_seconds(r['step_compile_s'])} "
        f"| {_seconds(r['init_first_s'])} | {_seconds(r['init_run_s'])} "
        f"| {_seconds(r['fwd_compile_s'])} | {_seconds(r['fwd_run_s'])} "
        f"| {_fmt(r['xla_gflops'])}{' (!)' if r['xla_count_misses_convs'] else ''} "
        f"| {_fmt(r['analytic_gflops'])} "
        f"| {_fmt(r['percent_of_peak'])} |")
  lines += [
      "",
      "step ms / images/s: the jitted `steps.train_step` (state donated), batch "
      f"{a['batch_size']}; vs normal = step time / normal's step time (>1: slower). "
      "compile s = lower + compile of the step (on GPU the first row's also "
      "holds conv autotuning that later rows reuse). init first = the data-dependent "
      "init's first call (lower + compile + first run), init run = later runs "
      "(median); fwd = one training-mode forward pass on the same batch (compile, "
      "run): the target is init first <= fwd compile + fwd run, init run ~ fwd run.",
      "GFLOP/s (XLA count) = `cost_analysis()['flops']` of the compiled step "
      "(all ops XLA counts) / step time; GFLOP/s (analytic) = conv+dense FLOPs "
      "only (2 per multiply-add; step = forward + weight grad + input grad, "
      "no input grad for the first layer) / step time; % of peak = analytic "
      "FLOP/s / matmul peak (both at JAX's default matmul precision, which is "
      "TF32 for float32 on recent NVIDIA GPUs).",
  ]
  if any(r["xla_count_misses_convs"] for r in report["rows"]):
    lines.append(
        "(!) XLA's count is under half the analytic conv/dense count: this "
        "backend runs the convolutions as library custom calls (cuDNN on GPU) "
        "that XLA's cost model counts as 0 FLOPs; use the analytic column.")
  lines += [
      "",
      "| parameterization | XLA GFLOP/step | analytic GFLOP/step | analytic fwd "
      "GFLOP/example | init lower / compile / 1st run s | fwd lower / compile / "
      "1st run s | init first / (fwd compile + run) | init run / fwd run |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in report["rows"]:
    xla = r["xla_step_flops"]
    parts = lambda name, r=r: " / ".join(_seconds(r[f"{name}_{k}_s"]) for k in (
        "lower", "xla_compile", "first_run"))
    lines.append(
        f"| {r['parameterization']} | {_fmt(xla / 1e9 if xla else None, 2)} "
        f"| {r['analytic_step_flops'] / 1e9:,.2f} "
        f"| {r['analytic_forward_flops_per_example'] / 1e9:,.4f} "
        f"| {parts('init')} | {parts('fwd')} "
        f"| {r['init_first_s'] / (r['fwd_compile_s'] + r['fwd_run_s']):.2f} "
        f"| {r['init_run_s'] / r['fwd_run_s']:.2f} |")
  lines += ["", "### PyTorch reference", ""]
  torch_report = report["torch"]
  lines.append(torch_report["note"])
  if torch_report["rows"]:
    lines += [
        "",
        "| parameterization | torch step ms | torch images/s | JAX images/s "
        "| JAX / torch images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in torch_report["rows"]:
      jax_ips = t.get("jax_images_per_s")
      lines.append(
          f"| {t['parameterization']} | {t['step_s'] * 1e3:,.2f} "
          f"| {t['images_per_s']:,.1f} | {_fmt(jax_ips)} "
          f"| {_fmt(t.get('jax_over_torch'), 2)}"
          f"{'x' if t.get('jax_over_torch') else ''} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints the report; returns it as a dict."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  machine = machine_info([os.path.relpath(os.path.abspath(__file__)), *argv])

  peaks = {"float32": matmul_peak_flops(args.matmul_size, jnp.float32,
                                        _few(args.reps), args.warmup)}
  if args.dtype != "float32":
    peaks[args.dtype] = matmul_peak_flops(args.matmul_size, classification.DTYPES[args.dtype],
                                          _few(args.reps), args.warmup)
  peak = peaks[args.dtype]

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((args.batch_size, *IMAGE_SHAPE)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, args.batch_size), jnp.int32)
  init_batch = jnp.asarray(
      rng.standard_normal((args.init_batch_size, *IMAGE_SHAPE)), jnp.float32)

  prepared = [prepare(args, p, images, labels, init_batch) for p in args.parameterizations]
  time_steps(prepared, args.reps, args.warmup)

  rows = []
  for entry in prepared:
    row = {k: v for k, v in entry.items()
           if k not in ("state", "step_fn", "images", "labels", "step_key",
                        "learning_rate")}
    row["step_s"] = statistics.median(row["step_times_s"])
    row["images_per_s"] = args.batch_size / row["step_s"]
    xla = row["xla_step_flops"]
    row["xla_gflops"] = xla / row["step_s"] / 1e9 if xla else None
    # XLA:GPU hands convolutions to cuDNN as custom calls, which its cost
    # model counts as 0 FLOPs: the count is then mostly elementwise work.
    row["xla_count_misses_convs"] = bool(xla and xla < 0.5 * row["analytic_step_flops"])
    row["analytic_gflops"] = row["analytic_step_flops"] / row["step_s"] / 1e9
    row["percent_of_peak"] = 100 * row["analytic_gflops"] * 1e9 / peak
    rows.append(row)
  normal = next((r for r in rows if r["parameterization"] == "normal"), None)
  for row in rows:
    row["vs_normal"] = row["step_s"] / normal["step_s"] if normal else None
  del prepared  # frees the device buffers before torch runs

  if args.torch:
    torch_results, note = torch_rows(args)
  else:
    torch_results, note = [], "Skipped (--no-torch)."
  jax_by_name = {r["parameterization"]: r for r in rows}
  for t in torch_results:
    name = t["parameterization"].split(" ")[0]  # compiled rows compare with the same JAX row
    if name in jax_by_name:
      t["jax_images_per_s"] = jax_by_name[name]["images_per_s"]
      t["jax_over_torch"] = t["jax_images_per_s"] / t["images_per_s"]

  report = {"machine": machine, "args": vars(args), "matmul_peak_flops": peaks,
            "rows": rows, "torch": {"note": note, "rows": torch_results}}
  print(render(report), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
