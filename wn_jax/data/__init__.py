"""Data in, arrays out: CIFAR-10 and MNIST files, image folders, tfds; ZCA, batches; replay, Atari.

The data recipe follows the authors' CIFAR-10 code (openai/weightnorm,
`lasagne/train.py` and `lasagne/nn.py`, class `ZCA`):

* pixels are scaled as `x = (uint8 - 127.5) / 128` (`zca.scale_pixels`);
* a ZCA transform is fitted on all scaled training images, flattened to
  `[N, H * W * C]`, with regularisation 1e-5 added to the eigenvalues of the
  covariance, and the same transform is applied to the test set
  (`zca.fit_zca`, `zca.apply_zca`, `zca.whiten_dataset`);
* the paper uses no augmentation. `batches.augment` (random flips and
  translations) exists as an option that the paper configs leave off;
* the training set is visited in a new random order every epoch
  (`batches.epoch_permutation`, `batches.batch_indices`).

Everything works on whole in-memory arrays (CIFAR-10 is 150 MB as uint8 and
600 MB as float32), so there is no tf.data pipeline: the training loop
indexes the whitened arrays with `batches.batch_indices`.

The modules, in the order the data flows (each imports only those above it):

* `folder`: images in class folders, and the check for lossy files;
* `cifar10`: the original CIFAR-10 python / binary files;
* `sources`: the `Dataset` every source gives, tfds, and `load_dataset`,
  which picks the source the config names;
* `mnist`: the MNIST IDX files and their checksums, and binarization (VAE);
* `zca`: pixel scaling, the covariance spectrum and ZCA whitening;
* `cache`: `load_whitened`, the above through the on-disk cache;
* `batches`: epoch orders, batch indices, subsets and augmentation (no
  file or cache access);
* `replay`: the DQN's replay buffer, a ring of device arrays (whole
  transitions, or one Atari frame per step);
* `atari`: Atari games (ale-py) behind gymnax's functional interface.

Nothing in this package knows about models, optimizers or devices.
"""
