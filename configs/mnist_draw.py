r"""DRAW on binarized MNIST (section 5.3, Figure 4).

Defaults follow ../shared/DRAW_RECIPE.md (labels there: [paper] the WN
paper, [DRAW] the DRAW paper, [code] jbornschein/draw and Blocks,
[inference] a choice no source states; docs/DRAW.md lists each choice):
the reference code's MNIST model of its README, 64 glimpses, encoder and
decoder LSTMs of 256 units with peepholes, z of 100 per glimpse, a 2x2
read and a 5x5 write attention [code, DRAW Table 3]; every weight N(0,
0.01^2), biases 0, zero initial states [code]; the Bernoulli likelihood
of the final canvas and the KL summed over glimpses [code]; Adam 3e-4
after clipping the global gradient norm to 10, batch 100, no shuffling,
100 epochs, the test bound every epoch [code, paper]. 'wn' normalizes
every weight matrix per output unit, the LSTMs' input and recurrent
kernels separately, peepholes plain [paper, inference]; the learning rate
is not retuned [paper]. g starts at 1 in every WN layer, v the normal
model's N(0, 0.01^2) draw: the start of the authors' Lasagne
WeightNormLayer, which no source ties to DRAW; chosen on the evidence in
docs/DRAW.md (with g = ||v|| the WN scales can grow only ~lr per step from
0.1-0.16, and the model stays on its plateau). g = ||v|| is `:g_norm`.

Data: the reference trains on Larochelle's statically binarized MNIST,
which is not in our data; the recipe's fallback `data.binarization=
'fixed'` binarizes the original MNIST once with fixed seeds (the first
50,000 training images; the 10,000 test images). A different draw, not
the same benchmark file.

Variants, comma-separated after the file name:
  normal | wn        the parameterization (default wn)
  joint              WN with one g per gate unit over [W_x; W_h]
  g_norm             WN with g starting at ||v|| in every layer (w = v:
                     the normal model's start; the authors' Keras wrapper)
  g_one              g starting at 1 in every WN layer (the default; the
                     name kept for commands that spell it out)
  short              T = 16 glimpses, nothing else changed: a different,
                     cheaper model (the CPU supplement)
  quick              CPU preset: 10 epochs, the test bound on 1,000 test
                     images every 100 updates, pictures every epoch

Launch:
  python train.py --config configs/mnist_draw.py:wn --workdir runs/draw_wn \
      --config.data.folder=/path/to/mnist
"""

import ml_collections

from configs.common import add_distributed_and_sweep, parse_variants

OPTIONS = ("joint", "g_norm", "g_one", "short", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants."""
  variants, parameterization = parse_variants(arg, OPTIONS, "configs/mnist_draw.py:normal,quick")
  if parameterization not in (None, "normal", "wn"):
    raise ValueError(f"DRAW trains 'normal' or 'wn' (batch norm does not apply to its "
                     f"recurrence, paper section 5.3), got {parameterization!r}.")

  config = ml_collections.ConfigDict()
  config.task = "draw"  # wn_jax/tasks/draw.py
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = "mnist"  # the official IDX files in data.folder; or 'mnist_tfds'
  config.data.folder = ""
  config.data.tfds_data_dir = ""
  # 'fixed': every image binarized once, with a seed per split (the recipe's
  # fallback for Larochelle's binarized MNIST).
  config.data.binarization = "fixed"
  config.data.train_examples = 50000  # the first N training images [code: 50k train]
  config.data.train_binarization_seed = 1
  config.data.test_binarization_seed = 0  # the VAE's test set (configs/mnist_vae.py)

  config.model = ml_collections.ConfigDict()
  config.model.parameterization = parameterization or "wn"
  config.model.glimpses = 64
  config.model.encoder_units = 256
  config.model.decoder_units = 256
  config.model.latent = 100
  config.model.read_n = 2
  config.model.write_n = 5
  # WN of the LSTMs: 'separate' (W_x and W_h each per column) or 'joint';
  # g of every WN layer (LSTMs and dense maps) starting at 'one' (1) or
  # 'norm' (= ||v||: the normal model's start); docs/DRAW.md.
  config.model.normalization = "separate"
  config.model.g_start = "one"
  config.model.peepholes = True
  # No data-dependent init for the recurrent model [paper section 3]; the
  # loop's init_scale is unused.
  config.model.data_init = False
  config.model.init_scale = 1.0
  config.model.init_order = "sequential"
  config.matmul_precision = "default"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 3e-4  # [code] README's MNIST command
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.clip_norm = 10.0  # global gradient L2 norm [code]

  config.ema_decay = 0.0
  config.ema_epochs = 0.0

  config.num_epochs = 100
  config.batch_size = 100
  config.shuffle_train = False  # [code] SequentialScheme: the same batches every epoch
  config.init_batch_size = 100
  config.eval_batch_size = 500

  config.log_every_steps = 50
  config.log_norms_every_steps = 500
  config.checkpoint_every_epochs = 1
  config.eval_every_epochs = 1  # [code] after every epoch, all 10,000 test images
  config.eval_every_steps = 0
  config.eval_subset = 1000
  config.pictures_every_epochs = 10
  config.keep_checkpoints = 3
  add_distributed_and_sweep(config)

  if "joint" in variants:
    config.model.normalization = "joint"
  if "g_norm" in variants and "g_one" in variants:
    raise ValueError("Variants 'g_norm' and 'g_one' are two starts of g; name one.")
  if "g_norm" in variants:
    config.model.g_start = "norm"
  if "short" in variants:
    config.model.glimpses = 16
  if "quick" in variants:
    config.num_epochs = 10
    config.eval_every_steps = 100
    config.pictures_every_epochs = 1
  return config
