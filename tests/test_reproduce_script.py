"""scripts/reproduce_gpu.sh: run names become the right overrides, and the
original CIFAR-10 arrives in staged parts that are joined, checked and used."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from wn_jax.trainer import record_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "reproduce_gpu.sh")
TINY = ("--config.model.width=4 --config.num_epochs=2 --config.optimizer.anneal_start_epoch=1 "
        "--config.batch_size=10 --config.init_batch_size=20 --config.eval_batch_size=12")
PIPES_CLOSE_WITHIN_S = 10


def _write_cifar10_python(folder, per_batch=6, seed=0):
  """A tiny cifar-10-batches-py: 5 train batches + test_batch of `per_batch`
  random 32x32 images each, in the official pickle layout."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder)
  for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"batch_label": stem.encode(),
             b"labels": [int(label) for label in rng.integers(0, 10, per_batch)],
             b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             b"filenames": [b"x.png"] * per_batch}
    with open(os.path.join(folder, stem), "wb") as f:
      pickle.dump(batch, f, protocol=2)
  with open(os.path.join(folder, "batches.meta"), "wb") as f:
    pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)
  return str(folder)


@pytest.fixture(scope="module")
def cifar10_parts(tmp_path_factory):
  """(parts, sha256): a tiny cifar-10-python.tar.xz cut into 3 parts."""
  root = tmp_path_factory.mktemp("cifar10")
  _write_cifar10_python(root / "cifar-10-batches-py")
  archive = root / "cifar-10-python.tar.xz"
  with tarfile.open(archive, "w:xz") as tar:
    tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
  content = archive.read_bytes()
  cut = [0, len(content) // 3, 2 * len(content) // 3, len(content)]
  parts = []
  for i in range(3):
    part = root / "parts" / f"cifar-10-python.tar.xz.part{i}"
    part.parent.mkdir(exist_ok=True)
    part.write_bytes(content[cut[i]:cut[i + 1]])
    parts.append(str(part))
  return parts, hashlib.sha256(content).hexdigest()


def _run_script(args, tmp_path, budget_s=900, **env):
  env = {**os.environ, "WORK_DIR": str(tmp_path / "work"), "STAGE_DIR": str(tmp_path / "stage"),
         "DATA_ROOT": str(tmp_path / "data_root"), "BUDGET_S": str(budget_s), "EXTRA_ARGS": TINY,
         # The script calls `python3`: make it this interpreter.
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **env}
  process = subprocess.Popen(["bash", SCRIPT, *map(str, args)], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  outputs = {}

  def read(name, pipe):
    outputs[name] = pipe.read()

  readers = [threading.Thread(target=read, args=("stdout", process.stdout)),
             threading.Thread(target=read, args=("stderr", process.stderr))]
  for reader in readers:
    reader.start()
  returncode = process.wait(timeout=1200)
  # A caller (a remote job runner, a CI step) returns when the pipes
  # close: nothing the script started may keep them open after it exits.
  for reader in readers:
    reader.join(timeout=PIPES_CLOSE_WITHIN_S)
  assert not any(reader.is_alive() for reader in readers), (
      f"the script exited but its stdout/stderr stayed open for over {PIPES_CLOSE_WITHIN_S} s")
  return subprocess.CompletedProcess(process.args, returncode, outputs["stdout"], outputs["stderr"])


def _records(out, name, member=None):
  """The run's config and the metrics of the run (or of one sweep member)."""
  folder = f"./{name}/{member}" if member else f"./{name}"
  with tarfile.open(out / f"records_{name}.tgz") as records:
    config = json.load(records.extractfile(f"./{name}/config.json"))
    metrics = records.extractfile(f"{folder}/metrics.jsonl").read().decode()
  return config, record_files.parse_records(metrics.splitlines())


@pytest.mark.parametrize("runs, message", [
    (["wn_lr0.001"], "unknown run 'wn_lr0.001'"),
    (["wn_lr0.001_s0_zca"], "unknown run"),
    (["wn_lr0.001_s0_jpeg"], "unknown run"),
    (["layernorm_lr0.001_s0"], "unknown run"),
    (["bench", "wn_lr0.001_s0"], "bench runs alone"),
    (["vae_mnist_wn_seeds0"], "unknown run"),
    (["vae_mnist_weightnorm_seeds2"], "unknown run"),
    (["draw_mnist_bn_seeds2"], "unknown run"),
    (["dqn_minatar_wn_mobn_seeds2"], "unknown run"),
    (["dqn_minatar_wn_lr_seeds2"], "unknown run"),
    (["dqn_atari_pong_wn_s0"], "unknown run"),
    (["dqn_atari_breakout_wn_seeds2"], "unknown run"),
    ([], "usage"),
])
def test_bad_run_names_are_refused_before_anything_starts(runs, message, tmp_path):
  result = _run_script([tmp_path / "out", *runs], tmp_path, CIFAR10_DIR=str(tmp_path / "none"))
  assert result.returncode == 2
  assert message in result.stderr
  assert not (tmp_path / "work").exists()


@pytest.mark.slow  # end-to-end script run
def test_jpegcopy_runs_train_on_the_jpeg_folder(image_folder, tmp_path):
  name = "wn_lr0.001_s0_jpegcopy"
  result = _run_script([tmp_path / "out", name], tmp_path, CIFAR10_DIR=str(tmp_path / "none"),
                       JPEG_DIR=image_folder)
  assert result.returncode == 0, result.stderr[-3000:]
  config, _ = _records(tmp_path / "out", name)
  assert config["data"]["source"] == "folder"
  assert config["data"]["folder"] == image_folder


@pytest.mark.slow  # end-to-end script run on 32x32 images (a 3072-dim ZCA)
def test_staged_parts_are_joined_checked_and_trained_on_with_the_named_overrides(
    cifar10_parts, tmp_path):
  parts, sha256 = cifar10_parts
  for part in parts:  # One call per part, as on a machine that takes 32 MiB a call.
    staged = _run_script(["stage", part], tmp_path)
    assert staged.returncode == 0, staged.stderr
    assert f"staged {os.path.basename(part)}" in staged.stdout
  name = "wn_mobn_lr3e-4_s1_zca1e-2"
  result = _run_script([tmp_path / "out", name], tmp_path, CIFAR10_SHA256=sha256)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"joined 3 part(s), sha256 {sha256}: ok" in result.stderr
  assert f"{name}: finished" in result.stdout
  config, metrics = _records(tmp_path / "out", name)
  assert config["data"]["source"] == "cifar10_python"  # The original is the default.
  assert config["data"]["folder"] == str(tmp_path / "data_root" / "cifar-10-batches-py")
  assert config["model"]["parameterization"] == "wn_mobn"
  assert config["optimizer"]["learning_rate"] == 3e-4
  assert config["seed"] == 1
  assert config["data"]["zca_regularization"] == 1e-2
  assert config["num_epochs"] == 2 and config["model"]["width"] == 4  # EXTRA_ARGS
  assert [m["epoch"] for m in metrics if "test_error" in m] == [1, 2]
  assert (tmp_path / "out" / f"logs_{name}.tgz").exists()


@pytest.mark.slow  # end-to-end script run
def test_vae_runs_train_their_seeds_as_one_sweep(tmp_path):
  import gzip
  import struct
  mnist = tmp_path / "mnist"
  mnist.mkdir()
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 40), ("t10k", 10)):
    for kind, array in (("images", rng.integers(0, 256, (n, 8, 8))),
                        ("labels", rng.integers(0, 10, n))):
      header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(
          struct.pack(">I", d) for d in array.shape)
      (mnist / f"{prefix}-{kind}-idx{array.ndim}-ubyte.gz").write_bytes(
          gzip.compress(header + array.astype(np.uint8).tobytes()))
  tiny_vae = ("--config.model.widths=(2,2,2) --config.model.blocks_per_stage=1 "
              "--config.model.hidden=4 --config.model.latent=2 --config.num_epochs=1 "
              "--config.batch_size=10 --config.init_batch_size=10 --config.eval_batch_size=5 "
              "--config.eval.iwae_samples=2 --config.eval.iwae_examples=4")
  name = "vae_mnist_normal_direct_seeds2"  # the direct reading of normal
  result = _run_script([tmp_path / "out", name], tmp_path, MNIST_DIR=str(mnist),
                       EXTRA_ARGS=tiny_vae)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{name}: finished" in result.stdout
  with tarfile.open(tmp_path / "out" / f"records_{name}.tgz") as records:
    names = sorted(records.getnames())
    config = json.load(records.extractfile(f"./{name}/config.json"))
    member = record_files.parse_records(records.extractfile(
        f"./{name}/normal_direct_lr0.002_s1/metrics.jsonl").read().decode().splitlines())
  assert f"./{name}/normal_direct_lr0.002_s0/metrics.jsonl" in names
  assert config["task"] == "vae" and config["model"]["parameterization"] == "normal"
  assert config["model"]["normal_weights"] == "direct"
  assert config["sweep"]["seed"] == [0, 1] and config["sweep"]["member_loop"] == "vmap"
  assert [m["epoch"] for m in member if "test_elbo" in m] == [1]
  assert any("test_iwae_k2_n4" in m for m in member)


def test_a_missing_part_stops_before_training(cifar10_parts, tmp_path):
  parts, sha256 = cifar10_parts
  for part in (parts[0], parts[2]):
    assert _run_script(["stage", part], tmp_path).returncode == 0
  result = _run_script([tmp_path / "out", "wn_lr0.001_s0"], tmp_path, CIFAR10_SHA256=sha256)
  assert result.returncode == 3
  assert f"not {sha256} (a part missing, damaged or out of order); nothing trained" in result.stderr
  assert not (tmp_path / "work" / "wn_lr0.001_s0" / "wn_lr0.001_s0").exists()


def test_stage_refuses_a_file_that_is_not_a_part(tmp_path):
  not_a_part = tmp_path / "cifar-10-python.tar.xz"
  not_a_part.write_bytes(b"x")
  result = _run_script(["stage", not_a_part], tmp_path)
  assert result.returncode == 2
  assert "is not named <archive>.part<N>" in result.stderr


@pytest.mark.slow  # end-to-end script run
def test_draw_runs_train_their_seeds_as_one_sweep(tiny_mnist, tmp_path):
  tiny_draw = ("--config.data.train_examples=20 --config.model.glimpses=2 "
               "--config.model.encoder_units=4 --config.model.decoder_units=4 "
               "--config.model.latent=2 --config.model.write_n=3 --config.num_epochs=1 "
               "--config.batch_size=10 --config.init_batch_size=10 --config.eval_batch_size=5")
  name = "draw_mnist_wn_seeds2"
  result = _run_script([tmp_path / "out", name], tmp_path, MNIST_DIR=tiny_mnist,
                       EXTRA_ARGS=tiny_draw)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{name}: finished" in result.stdout
  config, member = _records(tmp_path / "out", name, "wn_nodatainit_lr0.0003_s1")
  assert config["task"] == "draw" and config["model"]["parameterization"] == "wn"
  assert config["sweep"]["seed"] == [0, 1] and config["sweep"]["member_loop"] == "vmap"
  assert [m["epoch"] for m in member if "test_elbo" in m] == [1]


@pytest.mark.slow  # end-to-end script run
@pytest.mark.skipif(__import__("importlib").util.find_spec("gymnax") is None,
                    reason="needs the rl extra: pip install -e '.[test,rl]'")
def test_dqn_runs_take_the_named_learning_rate_and_seeds(tmp_path):
  tiny_dqn = ("--config.env.max_steps_in_episode=30 --config.dqn.replay_capacity=200 "
              "--config.dqn.replay_start=40 --config.dqn.init_states=20 "
              "--config.dqn.env_steps_per_epoch=40 --config.dqn.test_episodes=2 "
              "--config.eval_batch_size=2 --config.batch_size=8 --config.num_epochs=1")
  name = "dqn_minatar_normal_lr3e-4_seeds2"
  result = _run_script([tmp_path / "out", name], tmp_path, EXTRA_ARGS=tiny_dqn)
  assert result.returncode == 0, result.stderr[-3000:]
  config, member = _records(tmp_path / "out", name, "normal_nodatainit_lr0.0003_s1")
  assert config["task"] == "dqn" and config["optimizer"]["learning_rate"] == 3e-4
  assert config["sweep"]["seed"] == [0, 1]
  assert [m["epoch"] for m in member if "test_return" in m] == [1]


@pytest.mark.slow  # end-to-end script run
@pytest.mark.skipif(__import__("importlib").util.find_spec("ale_py") is None,
                    reason="needs the rl extra: pip install -e '.[test,rl]'")
def test_atari_runs_take_the_named_game_learning_rate_and_seed(tmp_path):
  tiny_atari = ("--config.env.max_steps_in_episode=100 --config.dqn.replay_capacity=200 "
                "--config.dqn.replay_start=40 --config.dqn.init_states=20 "
                "--config.dqn.env_steps_per_epoch=40 --config.dqn.test_env_steps=20 "
                "--config.batch_size=4 --config.num_epochs=1 --config.log_norms_every_steps=5")
  name = "dqn_atari_breakout_normal_lr3e-4_s1_short_epochs"
  result = _run_script([tmp_path / "out", name], tmp_path, EXTRA_ARGS=tiny_atari)
  assert result.returncode == 0, result.stderr[-3000:]
  config, records = _records(tmp_path / "out", name)
  assert config["task"] == "dqn" and config["env"]["name"] == "breakout"
  assert config["optimizer"]["learning_rate"] == 3e-4 and config["seed"] == 1
  assert config["model"]["parameterization"] == "normal"
  assert [m["epoch"] for m in records if "test_return" in m] == [1]

