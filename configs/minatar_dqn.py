r"""DQN on MinAtar (gymnax), the CPU-scale stand-in for section 5.4.

Defaults follow ../shared/DQN_RECIPE.md section 5(b) (labels there: [P]
the paper, [C] spragunr/deep_q_rl and MinAtar's examples/dqn.py, [I] an
inference; docs/DQN.md lists each choice): deep_q_rl's protocol at
MinAtar's scale (its step counts divided by 10: replay 100,000, learning
after 5,000 random steps, target copied every 1,000 env steps = 250
updates, epsilon 1 -> 0.1 over 100,000 env steps) [C, I]; one update
every 4 env steps [C]; gamma 0.99, Huber delta 1, rewards clipped to
[-1, 1] [C]; the paper's changes: Adamax with b1 = 0.5, minibatch 64,
learning rate 1e-4 (normal) / 3e-4 (WN), WN with the data-dependent init
[P]; MinAtar's network (conv 16 3x3, dense 128) [C]; gymnax's defaults
(no sticky actions, the minimal action set) with the episode cap raised to
10,000 steps [I]. An epoch is 25,000 env steps, then 32 test episodes at
epsilon 0.05 [I]; 80 epochs = 2M env steps.

Variants, comma-separated after the file name:
  normal | wn | bn   the parameterization (default wn); the learning rate
                     follows the paper's pick for it (normal and bn 1e-4,
                     wn 3e-4) unless `lr3e-4` / `lr1e-4` says otherwise
  lr1e-4 | lr3e-4    the learning rate, whatever the parameterization
  data_init          'normal' with the data-dependent init (the CIFAR
                     code's baseline; an ablation)
  breakout           Breakout-MinAtar instead of Space Invaders
  quick              CPU preset: 40 epochs (1M env steps)

Launch:
  python train.py --config configs/minatar_dqn.py:wn --workdir runs/dqn_wn
"""

import ml_collections

from configs.common import add_distributed_and_sweep, parse_variants

OPTIONS = ("lr1e-4", "lr3e-4", "data_init", "breakout", "quick")
PAPER_LEARNING_RATES = {"normal": 1e-4, "wn": 3e-4, "bn": 1e-4}  # [P] section 5.4


def dqn_optimizer(parameterization: str, variants: list[str]) -> ml_collections.ConfigDict:
  """Adamax as the paper ran the DQN (both DQN configs), at the paper's
  learning rate for `parameterization` unless `lr1e-4` / `lr3e-4` says
  otherwise."""
  if "lr1e-4" in variants and "lr3e-4" in variants:
    raise ValueError("Pick one learning rate variant, got lr1e-4 and lr3e-4.")
  optimizer = ml_collections.ConfigDict()
  optimizer.learning_rate = PAPER_LEARNING_RATES[parameterization]
  if "lr1e-4" in variants:
    optimizer.learning_rate = 1e-4
  if "lr3e-4" in variants:
    optimizer.learning_rate = 3e-4
  optimizer.b1 = 0.5  # [P] "Adamax with momentum 0.5"
  optimizer.b2 = 0.999  # not stated [P]: Kingma & Ba's default
  optimizer.eps = 1e-8
  return optimizer


def dqn_model(parameterization: str, variants: list[str], torso: str
              ) -> ml_collections.ConfigDict:
  """The Q-network's section of both DQN configs (`models.dqn.QNetwork`)."""
  model = ml_collections.ConfigDict()
  model.parameterization = parameterization
  model.torso = torso
  # WN: the data-dependent init on replay states [P]; normal: deep_q_rl's
  # uniform init and biases 0.1 [C]; bn: never data-initialised.
  model.data_init = parameterization == "wn" or "data_init" in variants
  model.init_scale = 1.0
  model.init_order = "sequential"
  model.bn_momentum = 0.9
  model.bn_epsilon = 1e-6
  model.conv_weight_grad = "xla"
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants."""
  variants, parameterization = parse_variants(arg, OPTIONS, "configs/minatar_dqn.py:normal,quick")
  parameterization = parameterization or "wn"
  if parameterization not in PAPER_LEARNING_RATES:
    raise ValueError(f"The DQN trains 'normal', 'wn' or 'bn', got {parameterization!r}.")

  config = ml_collections.ConfigDict()
  config.task = "dqn"  # wn_jax/tasks/dqn.py
  config.seed = 0

  config.env = ml_collections.ConfigDict()
  config.env.suite = "gymnax"
  config.env.name = "SpaceInvaders-MinAtar"
  config.env.max_steps_in_episode = 10_000  # gymnax's default 1,000 [I]

  config.model = dqn_model(parameterization, variants, torso="minatar")
  # 'xla': measured faster here than 'per_tap' for this small conv (300 vs
  # 262 updates/s, one thread, load ~5).
  config.model.conv_weight_grad = "xla"
  config.matmul_precision = "default"

  config.dqn = ml_collections.ConfigDict()
  config.dqn.gamma = 0.99
  config.dqn.replay_capacity = 100_000
  config.dqn.pack_replay = True  # 0/1 planes bit-packed: 15 MB instead of 120
  config.dqn.replay_start = 5_000  # random-policy steps before learning
  config.dqn.init_states = 500  # replay states of the data-dependent init [I: the CIFAR code's 500]
  config.dqn.env_steps_per_update = 4
  config.dqn.target_period_updates = 250
  config.dqn.epsilon_start = 1.0
  config.dqn.epsilon_end = 0.1
  config.dqn.epsilon_decay_env_steps = 100_000
  config.dqn.huber_delta = 1.0
  config.dqn.reward_clip = 1.0
  config.dqn.life_loss_terminal = False  # MinAtar games have no lives
  config.dqn.env_steps_per_epoch = 25_000
  config.dqn.test_episodes = 32
  config.dqn.test_env_steps = 0  # 0: each test slot plays one whole episode
  config.dqn.test_epsilon = 0.05

  config.optimizer = dqn_optimizer(parameterization, variants)

  config.ema_decay = 0.0
  config.ema_epochs = 0.0

  config.num_epochs = 80
  config.batch_size = 64  # the minibatch [P]
  config.shuffle_train = False  # the training rows only count updates
  config.init_batch_size = 2  # unused: the init draws dqn.init_states replay states
  config.eval_batch_size = 32  # = dqn.test_episodes, played in parallel

  config.log_every_steps = 1000
  config.log_norms_every_steps = 6250
  config.checkpoint_every_epochs = 1
  config.eval_every_epochs = 1
  config.eval_every_steps = 0
  config.eval_subset = 0
  config.pictures_every_epochs = 0
  config.keep_checkpoints = 2
  add_distributed_and_sweep(config)

  if "breakout" in variants:
    config.env.name = "Breakout-MinAtar"
  if "quick" in variants:
    config.num_epochs = 40
  return config
