r"""A convolutional VAE on the original CIFAR-10 (section 5.2's second panel),
in bits per dimension.

The paper's CIFAR-10 model is the authors' hierarchical ResNet VAE with
several stochastic layers and bidirectional inference (openai/iaf,
`cvae1`); its exact configuration is not published. This config is the
MNIST network of `configs/mnist_vae.py` (one 32-d latent layer, ResNet
blocks, two subsamplings, FC) at CIFAR's size, with the discretized
logistic likelihood of the authors' code on the 256 intensities, one
learned log-scale per colour channel (IAF paper, section C.5): a smaller,
single-latent-layer stand-in, not the paper's model. Its bound is in bits
per dimension (`bits_per_dim`: -ELBO / (3072 ln 2)).

Variants: those of `configs/mnist_vae.py` (the parameterization, `quick`,
`free_bits`, `sampled_kl`).

  python train.py --config configs/cifar_vae.py:wn --workdir runs/cifar_vae_wn \
      --config.data.folder=/path/to/cifar-10-python.tar.gz
"""

import ml_collections

from configs import mnist_vae


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = mnist_vae.get_config(arg)
  config.data.source = "cifar10_python"  # or 'cifar10_binary'
  config.model.likelihood = "logistic"
  config.model.widths = (32, 64, 64)
  config.model.hidden = 512
  # Intensities have std ~0.25 around the decoder's mean: start the
  # logistic's scale near that (log 0.1; its std is pi/sqrt(3) x scale).
  config.model.logistic_init_log_scale = -2.3
  if "quick" not in (arg or "").replace(" ", "").split(","):
    config.num_epochs = 450  # Figure 3's CIFAR-10 x-axis
  return config
