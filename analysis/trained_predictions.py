r"""What trained networks predict on the test set, and at what scale.

    python analysis/trained_predictions.py WORKDIR [WORKDIR ...] \
        [--folder /path/to/cifar10-jpeg] [--num 2000]

For each finished training workdir (its `config.json` and newest checkpoint
under `checkpoints/`) this restores the trained parameters, applies the
network in eval mode to `--num` whitened test images (drawn with seed 0) (loaded as
`train.py` does, through the data cache; `--folder` replaces the config's
data folder) and prints a markdown table row: test error on those images,
how many distinct classes the network predicts and the share of its most
frequent prediction, the std of the logits, and the std of every Normalized
layer's output (its pre-activation; per unit over batch and positions, the
mean over units). A network that sits at chance by predicting one class,
or whose pre-activations are far from unit scale, shows it here.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

ANALYSIS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(ANALYSIS_DIR), ANALYSIS_DIR]
from init_order_stats import layer_statistics  # noqa: E402

from configs import cifar  # noqa: E402
from wn_jax.data import cache  # noqa: E402
from wn_jax.tasks import classification  # noqa: E402
from wn_jax.trainer import config_checks


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's saved config; it must have every key of today's config."""
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  current = cifar.get_config(saved.get("model", {}).get("parameterization", "wn"))
  missing = sorted(set(config_checks.flatten_config(json.loads(current.to_json())))
                   - set(config_checks.flatten_config(saved)))
  if missing:
    raise ValueError(f"{workdir}/config.json lacks keys of the current config "
                     f"({', '.join(missing)}): it was written by an older version of "
                     "train.py; this script reads runs of the current version only.")
  return ml_collections.ConfigDict(saved)


def restore_variables(workdir: str) -> tuple[int, dict]:
  """(step, {'params': ..., **model_state}) of the newest checkpoint; a
  sweep's member axis must be 1 (a plain run) and is dropped."""
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints.")
  state = manager.restore(step, args=ocp.args.StandardRestore())
  members = {np.shape(x)[0] for x in jax.tree.leaves(state["params"])}
  if members != {1}:
    raise ValueError(f"{workdir} holds a sweep of {members} members; pass a plain run.")
  variables = {"params": state["params"], **state["model_state"]}
  return step, jax.tree.map(lambda x: jnp.asarray(x)[0], variables)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--folder", help="data folder, in place of the config's")
  parser.add_argument("--num", type=int, default=2000, help="test images used")
  args = parser.parse_args()
  rows, layer_names = [], None
  data_cache = {}
  for workdir in args.workdirs:
    config = read_config(workdir)
    if args.folder:
      config.data.folder = args.folder
    key = config.data.to_json()
    if key not in data_cache:
      data_cache[key] = cache.load_whitened(config.data)
    data = data_cache[key]
    # Folder data lists the test set class by class: draw, do not slice.
    rows_drawn = np.sort(np.random.default_rng(0).permutation(len(data.test_x))[:args.num])
    images, labels = data.test_x[rows_drawn], data.test_y[rows_drawn]
    model = classification.create_model(config, {"num_classes": len(data.class_names)})
    step, variables = restore_variables(workdir)
    logits, layers = layer_statistics(model, variables, jnp.asarray(images), train=False)
    logits = np.asarray(logits, np.float64)
    stds = {name: std_mean for name, _, std_mean, _, _ in layers}
    predictions = logits.argmax(-1)
    counts = np.bincount(predictions, minlength=logits.shape[-1])
    layer_names = layer_names or list(stds)
    rows.append(f"| {os.path.basename(os.path.normpath(workdir))} | {step} | "
                f"{100 * np.mean(predictions != labels):.2f}% | {np.count_nonzero(counts)} | "
                f"{100 * counts.max() / len(predictions):.1f}% | {logits.std():.3g} | "
                + " | ".join(f"{stds[n]:.3g}" for n in layer_names) + " |")
  print(f"{args.num} whitened test images (drawn with seed 0), eval mode; layer columns: mean over units of "
        "the per-unit std of the layer's output")
  print("| run | step | test error | classes predicted | most frequent prediction | "
        "logit std | " + " | ".join(layer_names) + " |")
  print("| --- " * (6 + len(layer_names)) + "|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
