"""Train any of the paper's experiments: absl flags + one call into the library.

  python train.py --config configs/cifar.py[:variant[,variant]] --workdir DIR \
      [--config.key=value ...]

The config names the task (CIFAR-10, the VAE, DRAW, the DQN: configs/).
Re-running the same command resumes from the newest checkpoint in DIR.
"""

from absl import app, flags
from ml_collections import config_flags

from wn_jax.trainer import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.")
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/cifar.py:wn_mobn,quick.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
