r"""DQN on the Atari games (ale-py): the paper's protocol of section 5.4.

Defaults follow ../shared/DQN_RECIPE.md sections 2, 3 and 5(a) (labels
there: [P] the paper, [C] spragunr/deep_q_rl's `run_nature.py`, [D] ale-py
0.12.1, [I] an inference; docs/DQN.md lists each choice): deep_q_rl's
protocol (replay 1,000,000 agent steps, learning after 50,000 random ones,
one update every 4 agent steps, the target network copied every 2,500
updates, epsilon 1 -> 0.1 over 1,000,000 agent steps, gamma 0.99, Huber
delta 1, rewards clipped to [-1, 1], a lost life terminal for learning)
[C]; the emulator as deep_q_rl ran it (ale-py's ROM, no sticky actions,
the minimal action set, frame skip 4 with the max of the last two
screens, 84x84 grayscale, 4 frames a state, 0-30 no-ops at the start) [C,
D]; the Nature network [C]; the paper's changes: Adamax with b1 = 0.5,
minibatch 64, learning rate 1e-4 (normal) / 3e-4 (WN), WN with the
data-dependent init [P]. An epoch is 250,000 agent steps (1M frames), then
deep_q_rl's test epoch: 125,000 agent steps at epsilon 0.05, the mean
return of the episodes that ended in it [C]; 200 epochs [C]. Episodes stop
at 27,000 agent steps (108,000 frames, ale-py's v5 cap; deep_q_rl set
none) [I].

Variants, comma-separated after the file name:
  normal | wn | bn   the parameterization (default wn), with the paper's
                     learning rate for it (normal and bn 1e-4, wn 3e-4)
  lr1e-4 | lr3e-4    the learning rate, whatever the parameterization
  data_init          'normal' with the data-dependent init (an ablation)
  breakout | enduro | seaquest
                     the game (default Space Invaders, Figure 5's)
  short_epochs       epochs of 50,000 agent steps, each followed by a
                     25,000-step test epoch, 1,000 of them: the same
                     training (testing touches no training state, and
                     exploration follows agent steps), tested 5x as often
                     on a 5x shorter test, at the same test cost, and
                     checkpointed 5x as often (for jobs with a time limit)

Launch (a GPU job: see README, 'The DQN experiment'):
  python train.py --config configs/atari_dqn.py:wn --workdir runs/atari_wn
"""

import ml_collections

from configs.common import add_distributed_and_sweep, parse_variants
from configs.minatar_dqn import PAPER_LEARNING_RATES, dqn_model, dqn_optimizer

GAMES = {"breakout": "breakout", "enduro": "enduro", "seaquest": "seaquest"}
OPTIONS = ("lr1e-4", "lr3e-4", "data_init", "short_epochs", *GAMES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants."""
  variants, parameterization = parse_variants(arg, OPTIONS, "configs/atari_dqn.py:normal,breakout")
  parameterization = parameterization or "wn"
  if parameterization not in PAPER_LEARNING_RATES:
    raise ValueError(f"The DQN trains 'normal', 'wn' or 'bn', got {parameterization!r}.")

  config = ml_collections.ConfigDict()
  config.task = "dqn"  # wn_jax/tasks/dqn.py
  config.seed = 0

  config.env = ml_collections.ConfigDict()
  config.env.suite = "ale"  # wn_jax/data/atari.py
  config.env.name = "space_invaders"  # ale-py's ROM id
  config.env.frame_skip = 4  # [C] FRAME_SKIP
  config.env.noop_max = 30  # [C] MAX_START_NULLOPS
  config.env.max_steps_in_episode = 27_000  # 108,000 frames [I: ale-py v5's cap]

  config.model = dqn_model(parameterization, variants, torso="nature")  # [C] nature_dnn
  config.matmul_precision = "default"

  config.dqn = ml_collections.ConfigDict()
  config.dqn.gamma = 0.99  # [C] DISCOUNT
  config.dqn.replay_capacity = 1_000_000  # [C] REPLAY_MEMORY_SIZE; 7 GB of frames
  config.dqn.pack_replay = False  # frames are 8-bit gray, not 0/1 planes
  config.dqn.replay_start = 50_000  # [C] REPLAY_START_SIZE, random policy
  config.dqn.init_states = 500  # replay states of the data-dependent init [I]
  config.dqn.env_steps_per_update = 4  # [C] UPDATE_FREQUENCY
  config.dqn.target_period_updates = 2_500  # [C] FREEZE_INTERVAL 10,000 steps / 4
  config.dqn.epsilon_start = 1.0  # [C]
  config.dqn.epsilon_end = 0.1  # [C]
  config.dqn.epsilon_decay_env_steps = 1_000_000  # [C] EPSILON_DECAY
  config.dqn.huber_delta = 1.0  # [C] CLIP_DELTA
  config.dqn.reward_clip = 1.0  # [C]
  config.dqn.life_loss_terminal = True  # [C] DEATH_ENDS_EPISODE (training only)
  config.dqn.env_steps_per_epoch = 250_000  # [C] STEPS_PER_EPOCH
  config.dqn.test_episodes = 1  # one test stream, as deep_q_rl
  config.dqn.test_env_steps = 125_000  # [C] STEPS_PER_TEST
  config.dqn.test_epsilon = 0.05  # [C] EPSILON_TEST

  config.optimizer = dqn_optimizer(parameterization, variants)

  config.ema_decay = 0.0
  config.ema_epochs = 0.0

  config.num_epochs = 200  # [C] EPOCHS
  config.batch_size = 64  # the minibatch [P]
  config.shuffle_train = False  # the training rows only count updates
  config.init_batch_size = 2  # unused: the init draws dqn.init_states replay states
  config.eval_batch_size = 1  # = dqn.test_episodes

  config.log_every_steps = 2_500
  config.log_norms_every_steps = 62_500
  config.checkpoint_every_epochs = 1
  config.eval_every_epochs = 1
  config.eval_every_steps = 0
  config.eval_subset = 0
  config.pictures_every_epochs = 0
  config.keep_checkpoints = 2
  add_distributed_and_sweep(config)

  games = [g for g in GAMES if g in variants]
  if len(games) > 1:
    raise ValueError(f"Pick one game, got {', '.join(games)}.")
  if games:
    config.env.name = GAMES[games[0]]
  if "short_epochs" in variants:
    config.dqn.env_steps_per_epoch //= 5
    config.dqn.test_env_steps //= 5
    config.num_epochs *= 5
    config.log_norms_every_steps //= 5
  return config
