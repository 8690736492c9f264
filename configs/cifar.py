r"""The paper's CIFAR-10 experiment (section 5.1), exactly as the authors' code.

Defaults reproduce ../shared/PAPER_RECIPE.md (authors' `lasagne/train.py`):
ZCA-whitened CIFAR-10, no augmentation, Gaussian input noise 0.15, the
9-conv network at width 96/192, Adam with epsilon inside the square root,
beta1 0.9 -> 0.5 and the learning rate decaying linearly to 0 over the last
100 of 200 epochs, batch 100, data-dependent init on 500 training examples.

Variants, comma-separated after the file name (big_vision style):
  normal | wn | bn | mobn | wn_mobn   the parameterization (default wn)
  no_data_init                        g = ||v||, b = 0 (WN) / standard init
                                      (normal, mobn) instead of the
                                      data-dependent init
  quick                               CPU preset: width 16, 10 epochs
                                      (anneal from epoch 5), see below
  augment                             flips + 2-pixel translations (NOT in
                                      the paper)
  direct                              normal / mobn train w directly after
                                      the data init (model.normal_weights
                                      'direct'; default 'scaled': the init's
                                      scale frozen, the authors' code)

Launch:
  python train.py --config configs/cifar.py --workdir runs/wn
  python train.py --config configs/cifar.py:wn_mobn --workdir runs/wn_mobn \
      --config.optimizer.learning_rate=0.003
  python train.py --config configs/cifar.py:wn,quick --workdir runs/quick_wn \
      --config.data.source=folder --config.data.folder=/path/to/cifar10-jpeg
"""

import ml_collections

from configs.common import add_distributed_and_sweep, parse_variants

OPTIONS = ("quick", "no_data_init", "augment", "direct")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants."""
  variants, parameterization = parse_variants(arg, OPTIONS, "configs/cifar.py:wn_mobn,quick")

  config = ml_collections.ConfigDict()
  config.task = "classification"  # wn_jax/tasks/classification.py
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # 'tfds', 'folder' (images in class folders), or the original CIFAR-10
  # files: 'cifar10_python' (the authors' input) / 'cifar10_binary'.
  config.data.source = "tfds"
  config.data.name = "cifar10"  # tfds name (cifar10, cifar100, svhn_cropped).
  config.data.tfds_data_dir = ""  # '' = tfds default.
  # 'folder': root/{train,test}/<class>/<image>; 'cifar10_python' /
  # 'cifar10_binary': cifar-10-batches-{py,bin}/ or the .tar.gz itself.
  config.data.folder = ""
  config.data.train_split = "train"
  config.data.test_split = "test"
  config.data.zca_regularization = 1e-5
  # Train on the first train_subset/num_classes images of each class (file
  # order; 0 = all). ZCA is still fitted on the whole training set.
  config.data.train_subset = 0
  # Where the loaded images and the whitened arrays are cached, so that the
  # next start with the same data and regularisation skips loading and ZCA:
  # '' = $WN_JAX_CACHE_DIR if set, else ~/.cache/wn_jax; 'none' = no cache.
  config.data.cache_dir = ""
  config.data.augment_flip = False  # The paper uses no augmentation.
  config.data.augment_max_translation = 0  # pixels

  config.model = ml_collections.ConfigDict()
  config.model.parameterization = parameterization or "wn"
  config.model.width = 96  # channels of the first block; the rest use 2x.
  config.model.data_init = True
  config.model.init_scale = 1.0
  # The reading of `normal`/`mobn` after the data-dependent init:
  # 'scaled' (the init's per-unit scale s frozen, the kernel trained; the
  # authors' CIFAR code) or 'direct' (s folded into w, w trained itself;
  # paper section 3). The same function at step 0; see docs/VAE.md.
  config.model.normal_weights = "scaled"
  # How the data-dependent init extends over the layers: 'sequential' (each
  # layer's statistics on the outputs of the already-initialised layers
  # before it, as the authors' code) or 'independent' (every layer's
  # statistics from one forward pass of the un-initialised network).
  config.model.init_order = "sequential"
  config.model.input_noise = 0.15
  config.model.dropout_rate = 0.5
  config.model.leaky_relu_slope = 0.1
  config.model.bn_momentum = 0.9
  config.model.bn_epsilon = 1e-6
  # Kernel gradient of the convs: 'xla', 'per_tap' (matmuls; faster on
  # XLA:CPU) or 'auto' (per_tap on CPU, xla on GPU/TPU).
  config.model.conv_weight_grad = "auto"
  config.model.dtype = "float32"  # or 'bfloat16' (params stay float32).
  # 'linen' (wn_jax.models) or 'nnx' (wn_jax.nnx): the same network and
  # numbers, the same checkpoints; the loop stays functional either way.
  config.model.api = "linen"
  # float32 conv/matmul arithmetic: 'default' (the backend's: TF32 on NVIDIA
  # Ampere/Hopper GPUs), 'high' (3 bfloat16 passes) or 'highest' (full
  # float32, as the paper's 2016 GPUs computed).
  config.matmul_precision = "default"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-3  # paper: best of {3e-4, 1e-3, 3e-3, 1e-2}
  config.optimizer.b1 = 0.9
  config.optimizer.b1_anneal = 0.5
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 0.0
  config.optimizer.eps_root = 1e-8  # epsilon inside the square root (code)
  # From this epoch on: beta1 = b1_anneal and the learning rate decays
  # linearly, reaching 0 at num_epochs (code: lr * min(2 - epoch/100, 1)).
  config.optimizer.anneal_start_epoch = 100

  # Exponential moving average of the parameters (Polyak averaging, as the
  # authors' PixelCNN++ code evaluates with; not in the CIFAR-10 recipe):
  # 0 = off, else e.g. 0.999; both test errors are then logged.
  config.ema_decay = 0.0
  # The same average given as a horizon in epochs (decay 1 - 1/(epochs *
  # steps per epoch)); 0 = use ema_decay.
  config.ema_epochs = 0.0

  config.num_epochs = 200
  config.batch_size = 100
  config.shuffle_train = True  # a fresh permutation of the training set every epoch
  config.init_batch_size = 500
  config.eval_batch_size = 500

  config.log_every_steps = 100
  # Mean ||v|| and g/||v|| per WN layer into metrics.jsonl (0 = never).
  config.log_norms_every_steps = 100
  config.checkpoint_every_epochs = 1
  # Test-set evaluation after every N-th epoch and after the last (the
  # paper's code evaluates every epoch).
  config.eval_every_epochs = 1
  # Also every N steps on the first eval_subset test examples (0 = off /
  # the whole test set).
  config.eval_every_steps = 0
  config.eval_subset = 0
  config.keep_checkpoints = 3
  # The task's pictures into TensorBoard and pictures/ after every N-th
  # evaluated epoch and the last (0 = never; the classifier draws none).
  config.pictures_every_epochs = 0
  add_distributed_and_sweep(config)

  if "no_data_init" in variants:
    config.model.data_init = False
  if "direct" in variants:
    config.model.normal_weights = "direct"
  if "augment" in variants:
    config.data.augment_flip = True
    config.data.augment_max_translation = 2
  if "quick" in variants:
    config.model.width = 16
    config.num_epochs = 10
    config.optimizer.anneal_start_epoch = 5
    # At width 16 the per-tap kernel gradient does not pay off: wn_mobn on
    # the 2-core CPU, 76-82 s per epoch with 'xla' vs 88-94 s with 'per_tap'.
    config.model.conv_weight_grad = "xla"
    config.log_every_steps = 50
    config.log_norms_every_steps = 50
  return config
