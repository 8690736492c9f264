"""Caches a sample of ZCA-whitened CIFAR-10 training images for the analyses.

    python analysis/whitened_cifar.py --folder /path/to/cifar10-jpeg --out /tmp/whitened.npz

Loads the data as `train.py` does (`sources.load_dataset` +
`whiten_dataset` with the recipe's ZCA regularisation 1e-5, fitted on all
50,000 training images) and saves `--num` training images drawn without
replacement with seed 0 (`images`, float32 [num, 32, 32, 3]) and their labels.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar  # noqa: E402
from wn_jax.data import sources, zca  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--folder", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num", type=int, default=5000)
  args = parser.parse_args()
  config = cifar.get_config("wn")
  config.data.source, config.data.folder = "folder", args.folder
  dataset = sources.load_dataset(config.data)
  train_x, _ = zca.whiten_dataset(dataset, config.data.zca_regularization)
  rows = np.random.default_rng(0).permutation(len(train_x))[:args.num]
  np.savez(args.out, images=train_x[rows].astype(np.float32),
           labels=np.asarray(dataset.train_labels)[rows])
  print(f"saved {args.num} whitened images to {args.out}")


if __name__ == "__main__":
  main()
