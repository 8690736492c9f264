r"""The paper's convolutional VAE on MNIST (section 5.2, Figure 3).

Defaults follow ../shared/VAE_RECIPE.md (labels there: [P] paper, [IAF]
the companion IAF paper, [code] the authors' openai/iaf code, [inf] a
choice where no source gives the value; docs/VAE.md lists each choice):
the original MNIST, training images binarized afresh every step, the test
set binarized once with a fixed seed [IAF, inf]; the ResNet VAE with
blocks at 16/32/32 feature maps, two subsamplings, FC 450 and a 32-d
diagonal Gaussian latent [P, IAF], ELU [IAF], residual branches x0.1
[code]; every conv and dense layer through the parameterization switch
with the data-dependent init in one pass through encoder, sampling and
decoder [P]; the one-sample ELBO, no free bits [P]; Adamax alpha 0.002,
betas 0.9/0.999, no bias correction [P, code]; Polyak averaging over 10
epochs [P]; batch 100 [inf]; 300 epochs (Figure 3's x-axis).

Variants, comma-separated after the file name:
  normal | wn | bn | mobn | wn_mobn   the parameterization (default wn)
  quick                               CPU preset: 3 epochs, a 0.1-epoch
                                      average, the test bound every epoch
                                      and on 2,000 test images every
                                      quarter epoch, IWAE on 1,000
  free_bits                           free bits 0.25 nats per latent
                                      dimension (the authors' code; not
                                      the paper's MNIST run)
  sampled_kl                          the one-sample KL estimate
                                      (log q - log p, the authors' code)
                                      instead of the closed form
  iaf                                 the IAF posterior (the paper's):
                                      2 steps of a 2-layer MADE
  direct                              normal / mobn train w directly after
                                      the data init (model.normal_weights
                                      'direct'; default 'scaled': the init's
                                      scale frozen, the authors' CIFAR code)

Launch:
  python train.py --config configs/mnist_vae.py --workdir runs/vae_wn \
      --config.data.folder=/path/to/mnist
  python train.py --config configs/mnist_vae.py:normal --workdir runs/vae_normal \
      --config.data.folder=/path/to/mnist
"""

import ml_collections

from configs.common import add_distributed_and_sweep, parse_variants

OPTIONS = ("quick", "free_bits", "sampled_kl", "iaf", "direct")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants."""
  variants, parameterization = parse_variants(arg, OPTIONS, "configs/mnist_vae.py:normal,quick")

  config = ml_collections.ConfigDict()
  config.task = "vae"  # wn_jax/tasks/vae.py
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # 'mnist': the four official IDX files (.gz or not) in data.folder;
  # 'mnist_tfds': tfds 'mnist' (downloads on first use).
  config.data.source = "mnist"
  config.data.folder = ""
  config.data.tfds_data_dir = ""
  # The one fixed binarization of the test set: the same for every run and
  # seed, so every arm is scored on the same binary images.
  config.data.test_binarization_seed = 0
  config.data.train_subset = 0  # the first N training images (0 = all 60,000)

  config.model = ml_collections.ConfigDict()
  config.model.parameterization = parameterization or "wn"
  config.model.likelihood = "bernoulli"
  # 'diagonal' (a Gaussian), or 'iaf': the Gaussian refined by inverse
  # autoregressive flow, the paper's choice; its steps and MADE width are
  # not found in any source (IAF Table 1 varies the depth, 2 and 8).
  config.model.posterior = "diagonal"
  config.model.iaf_steps = 2
  config.model.iaf_hidden = 64  # MADE hidden units (2 hidden layers)
  config.model.iaf_context = 32  # the encoder's context h, into each step
  # sigma = sigmoid(s + gate_bias): each step starts near the identity
  # (IAF paper: s initialised so that sigmoid(s) is near 1; +1..+2).
  config.model.iaf_gate_bias = 1.5
  config.model.widths = (16, 32, 32)
  config.model.blocks_per_stage = 2
  config.model.hidden = 450
  config.model.latent = 32
  config.model.data_init = True
  config.model.init_scale = 1.0  # [P] section 3: unit-variance pre-activations
  # The reading of `normal`/`mobn` after the data-dependent init:
  # 'scaled' (the init's per-unit scale s frozen, the kernel trained; the
  # authors' CIFAR code) or 'direct' (s folded into w, w trained itself;
  # paper section 3). The same function at step 0; see docs/VAE.md.
  config.model.normal_weights = "scaled"
  # The posterior head and the decoder's output layer start at std 0.1 (the
  # authors' code uses 0.1 everywhere): the paper's unit std on a log-std
  # would start the KL near 100 nats.
  config.model.head_init_scale = 0.1
  config.model.logistic_init_log_scale = 0.0  # unused by the Bernoulli likelihood
  config.model.init_order = "sequential"
  config.model.bn_momentum = 0.9
  config.model.bn_epsilon = 1e-6
  config.model.conv_weight_grad = "auto"
  config.matmul_precision = "default"

  config.objective = ml_collections.ConfigDict()
  # 'analytic': KL of the diagonal Gaussian against N(0, I) in closed form
  # (the same expectation as the sampled estimate, lower variance);
  # 'sample': log q(z|x) - log p(z) at the posterior sample (authors' code).
  config.objective.kl = "analytic"
  config.objective.free_bits = 0.0  # nats per latent dimension; 0 = the ELBO [P]

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.002  # [P] Adamax alpha
  config.optimizer.b1 = 0.9  # [code] "beta1 = 0.1" in 1 - beta notation
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8

  # Polyak averaging: an exponential moving average over ~10 epochs [P]:
  # decay 1 - 1/(10 * 600) per step at batch 100.
  config.ema_decay = 0.0
  config.ema_epochs = 10.0

  config.num_epochs = 300
  config.batch_size = 100
  config.shuffle_train = True  # a fresh permutation of the training set every epoch
  config.init_batch_size = 100  # one minibatch [P] section 3
  config.eval_batch_size = 500

  config.eval = ml_collections.ConfigDict()
  # After the last epoch: the importance-weighted bound with K samples
  # ([IAF] Table 1: K = 128) on the first iwae_examples test images (0 = all).
  config.eval.iwae_samples = 128
  config.eval.iwae_examples = 0
  config.eval.iwae_batch_size = 100

  config.log_every_steps = 100
  config.log_norms_every_steps = 600
  config.checkpoint_every_epochs = 1
  config.eval_every_epochs = 10  # Figure 3 plots every 10 epochs
  # Also every N steps on a fixed test subset (its first eval_subset images;
  # 0 = off): the early-training curves of the CPU runs.
  config.eval_every_steps = 0
  config.eval_subset = 2000
  config.pictures_every_epochs = 10
  config.keep_checkpoints = 3
  add_distributed_and_sweep(config)

  if "direct" in variants:
    config.model.normal_weights = "direct"
  if "free_bits" in variants:
    config.objective.free_bits = 0.25
  if "sampled_kl" in variants:
    config.objective.kl = "sample"
  if "iaf" in variants:
    config.model.posterior = "iaf"
    config.objective.kl = "sample"
  if "quick" in variants:
    # Early training only: 3 epochs; the average's horizon scaled as Figure
    # 3's (10 of 300 epochs, ~3%): 0.1 epoch.
    config.num_epochs = 3
    config.ema_epochs = 0.1
    config.eval_every_epochs = 1
    config.pictures_every_epochs = 1
    config.eval.iwae_examples = 1000
    config.eval_every_steps = 150  # a quarter epoch
  return config
