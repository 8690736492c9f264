"""DRAW (section 5.3): the bound's KL term, one weight draw for both arms, the
model's recurrence, and a run through the one loop that resumes bitwise."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_records
from PIL import Image

from configs import mnist_draw
from wn_jax.models.draw import DRAW, DRAWOutput
from wn_jax.parameterizations import plain_from_weight_norm
from wn_jax.tasks import draw
from wn_jax.trainer import config_checks, train
from wn_jax.trainer.program import Members, member_epoch_rows


def _tiny_model(parameterization="wn", **kwargs):
  fields = dict(image_shape=(8, 8), glimpses=3, encoder_units=6, decoder_units=5, latent=2,
                read_n=2, write_n=3, parameterization=parameterization)
  return DRAW(**{**fields, **kwargs})


def _images(batch=4, shape=(8, 8), seed=0):
  return (np.random.default_rng(seed).random((batch, *shape)) < 0.3).astype(np.uint8)


def test_kl_term_is_the_closed_form_summed_over_glimpses_and_dimensions():
  rng = np.random.default_rng(0)
  mean, log_std = rng.normal(size=(2, 3, 4, 5))  # [T, B, latent]
  out = DRAWOutput(canvas=jnp.zeros((4, 2, 2)), mean=jnp.asarray(mean, jnp.float32),
                   log_std=jnp.asarray(log_std, jnp.float32), canvases=None)
  _, kl = draw.bound_terms(np.zeros((4, 2, 2)), out)
  sigma2 = np.exp(2 * log_std)
  expected = 0.5 * np.sum(mean**2 + sigma2 - np.log(sigma2) - 1, axis=(0, 2))
  np.testing.assert_allclose(kl, expected, rtol=1e-5)
  # ...which is E_q[log q(z) - log N(z; 0, I)]: a Monte Carlo check of one glimpse.
  eps = rng.normal(size=(200_000, 5))
  z = mean[0, 0] + np.exp(log_std[0, 0]) * eps
  log_ratio = np.sum(-0.5 * eps**2 - log_std[0, 0] + 0.5 * z**2, axis=-1)
  one = 0.5 * np.sum(mean[0, 0]**2 + sigma2[0, 0] - np.log(sigma2[0, 0]) - 1)
  assert np.mean(log_ratio) == pytest.approx(one, abs=4 * np.std(log_ratio) / 450)


def test_reconstruction_term_is_the_bernoulli_cross_entropy_of_the_final_canvas():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4, 4)).astype(np.float32)
  x = (rng.random((3, 4, 4)) < 0.5).astype(np.uint8)
  zeros = jnp.zeros((2, 3, 1))
  recon, _ = draw.bound_terms(x, DRAWOutput(jnp.asarray(logits), zeros, zeros, None))
  p = 1 / (1 + np.exp(-logits))
  expected = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2))
  np.testing.assert_allclose(recon, expected, rtol=1e-5)


@pytest.mark.slow  # compiles the model: 4-8 s on the 2-core CPU
def test_normal_starts_from_the_function_of_wn_with_the_same_weight_draw():
  config = mnist_draw.get_config("wn")
  x, key = _images(), jax.random.key(3)
  rngs = {"params": jax.random.key(0)}
  wn_model, normal_model = _tiny_model("wn"), _tiny_model("normal")
  wn_vars = draw.init_variables(config, wn_model, {"images": x}, rngs)
  normal_vars = draw.init_variables(config, normal_model, {"images": x}, rngs)
  # The normal model's own variable structure, with the WN draw as kernels.
  own = normal_model.init(rngs, x.astype(np.float32), jnp.zeros((3, 4, 2)))
  assert jax.tree.structure(own) == jax.tree.structure(normal_vars)
  encoder = normal_vars["params"]["step"]["encoder"]
  np.testing.assert_array_equal(encoder["kernel"], wn_vars["params"]["step"]["encoder"]["v"])
  eps = jax.random.normal(key, (3, 4, 2))
  a = wn_model.apply(wn_vars, x, eps)
  b = normal_model.apply(normal_vars, x, eps)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-9)
  # Every weight draw is N(0, 0.01^2) (the reference code's init).
  kernel = np.asarray(normal_vars["params"]["step"]["decoder"]["recurrent_kernel"])
  assert kernel.std() == pytest.approx(0.01, rel=0.1)


@pytest.mark.slow  # compiles the model: 4-8 s on the 2-core CPU
def test_plain_from_weight_norm_folds_every_layer_at_any_g():
  x = _images()
  model = _tiny_model("wn", normalization="joint")
  variables = model.init(jax.random.key(0), x.astype(np.float32), jnp.zeros((3, 4, 2)))
  # Move every g away from ||v||, so that w differs from v.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 1.7 if path[-1].key in ("g", "recurrent_g") else p,
      variables["params"])
  eps = jax.random.normal(jax.random.key(1), (3, 4, 2))
  a = model.apply({"params": params}, x, eps)
  b = _tiny_model("normal").apply({"params": plain_from_weight_norm(params)[0]}, x, eps)
  np.testing.assert_allclose(a.canvas, b.canvas, rtol=1e-4, atol=1e-9)
  unscaled = model.apply(variables, x, eps).canvas
  assert np.max(np.abs(a.canvas - unscaled)) > 0.1 * np.max(np.abs(a.canvas))


@pytest.mark.slow  # compiles the model: 4-8 s on the 2-core CPU
def test_the_canvas_accumulates_the_writes_and_reads_the_previous_canvas():
  model = _tiny_model("normal").clone(keep_canvases=True)
  x = _images()
  variables = model.init(jax.random.key(0), x.astype(np.float32), jnp.zeros((3, 4, 2)))
  eps = jax.random.normal(jax.random.key(1), (3, 4, 2))
  out = model.apply(variables, x, eps)
  assert out.canvases.shape == (3, 4, 8, 8)
  np.testing.assert_array_equal(out.canvases[-1], out.canvas)
  # Glimpse t's posterior depends on the noise of earlier glimpses only.
  changed = eps.at[2].add(1.0)
  later = model.apply(variables, x, changed)
  np.testing.assert_array_equal(later.mean[:3], out.mean[:3])
  earlier = model.apply(variables, x, eps.at[0].add(1.0))
  assert not np.allclose(earlier.mean[1:], out.mean[1:])
  generated = model.apply(variables, eps, method=DRAW.generate)
  assert generated.canvases.shape == (3, 4, 8, 8)
  assert not np.any(generated.mean)


def test_no_shuffling_visits_the_same_batches_in_file_order_every_epoch():
  members = Members(configs=[None, None], record_dirs=["a", "b"], seeds=np.array([0, 1]),
                    learning_rates=np.ones(2), init_scales=np.ones(2), data_init=None)
  rows = [member_epoch_rows(members, epoch, 25, 10, shuffle=False) for epoch in (0, 3)]
  np.testing.assert_array_equal(rows[0], rows[1])
  np.testing.assert_array_equal(rows[0][1], np.arange(20).reshape(2, 10))
  shuffled = member_epoch_rows(members, 0, 25, 10)
  assert not np.array_equal(np.sort(shuffled[0].ravel()), shuffled[0].ravel())


@pytest.mark.parametrize("variant, g_start", [("wn", "one"), ("wn,g_one", "one"),
                                              ("wn,g_norm", "norm")])
def test_every_g_of_the_built_model_starts_where_the_config_says(variant, g_start):
  """Every g of DRAW (both LSTMs' input and recurrent g, and the five dense
  maps) is 1 under 'one' and ||v|| under 'norm'; v is the N(0, 0.01^2) draw."""
  config = mnist_draw.get_config(variant)
  config.model.update(glimpses=2, encoder_units=6, decoder_units=5, latent=2, write_n=3)
  assert config.model.g_start == g_start
  model = draw.create_model(config, {"image_shape": (8, 8)})
  params = draw.init_variables(
      config, model, {"images": _images()}, {"params": jax.random.key(0)})["params"]
  step = params["step"]
  dense = ("posterior_mean", "posterior_log_std", "read_attention", "write_attention",
           "write_patch")
  pairs = [(step[name]["linear"]["v"], step[name]["linear"]["g"]) for name in dense]
  for cell in ("encoder", "decoder"):
    pairs += [(step[cell]["v"], step[cell]["g"]),
              (step[cell]["recurrent_v"], step[cell]["recurrent_g"])]
  assert len(pairs) == 9
  for v, g in pairs:
    norm = np.sqrt(np.sum(np.square(np.asarray(v)), axis=0))
    np.testing.assert_allclose(g, np.ones_like(norm) if g_start == "one" else norm,
                               rtol=1e-5)
  every_v = np.concatenate([np.ravel(v) for v, _ in pairs])
  assert np.std(every_v) == pytest.approx(0.01, rel=0.15)


@pytest.mark.parametrize("variant, glimpses", [
    pytest.param("wn", 64, marks=pytest.mark.slow),  # 64 glimpses: 4 s on the 2-core CPU
    ("wn,short", 16)])
def test_the_short_variant_draws_in_16_glimpses_and_changes_nothing_else(variant, glimpses):
  config = mnist_draw.get_config(variant)
  same_but_glimpses = mnist_draw.get_config("wn")
  same_but_glimpses.model.glimpses = glimpses
  assert config.to_dict() == same_but_glimpses.to_dict()
  config.model.update(encoder_units=6, decoder_units=5, latent=2, write_n=3)
  model = draw.create_model(config, {"image_shape": (8, 8)})
  images = _images()
  variables = draw.init_variables(config, model, {"images": images},
                                  {"params": jax.random.key(0)})
  eps = jnp.zeros((config.model.glimpses, images.shape[0], 2))
  out = model.apply(variables, images.astype(jnp.float32), eps)
  assert out.mean.shape == (glimpses, images.shape[0], 2)  # a posterior per glimpse


def test_draw_config_errors_name_the_key(tiny_mnist):
  with pytest.raises(ValueError, match="batch norm does not apply"):
    mnist_draw.get_config("bn")
  for key, value, match in (("model.data_init", True, "data_init must be False"),
                            ("data.binarization", "dynamic", "data.binarization"),
                            ("optimizer.clip_norm", 0.0, "clip_norm"),
                            ("model.glimpses", 0, "model.glimpses")):
    config = tiny_draw_config(tiny_mnist)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
      config_checks.validate_config(config, num_devices=1)
  with pytest.raises(ValueError, match="both be positive"):
    _tiny_model(read_n=0)


def tiny_draw_config(folder, variant="wn"):
  config = mnist_draw.get_config(f"{variant},quick")
  config.data.folder = folder
  config.data.train_examples = 40
  config.model.glimpses = 3
  config.model.encoder_units = 6
  config.model.decoder_units = 5
  config.model.latent = 2
  config.model.write_n = 3
  config.num_epochs = 2
  config.batch_size = 10
  config.init_batch_size = 10
  config.eval_batch_size = 8
  config.eval_every_steps = 3
  config.eval_subset = 10
  config.log_every_steps = 2
  config.log_norms_every_steps = 3
  return config


@pytest.mark.slow  # two short runs and a resume
def test_a_draw_run_records_its_bound_and_resumes_bitwise(tiny_mnist, tmp_path):
  config = tiny_draw_config(tiny_mnist)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  records = read_records(tmp_path / "straight")
  epochs = [r for r in records if "train_elbo" in r]
  assert [r["epoch"] for r in epochs] == [1, 2]
  for r in epochs:
    for prefix in ("train", "test"):
      assert r[f"{prefix}_elbo"] == pytest.approx(-(r[f"{prefix}_recon"] + r[f"{prefix}_kl"]),
                                                  rel=1e-5)
    assert r["train_loss"] == pytest.approx(-r["train_elbo"], rel=1e-6)
  assert [r["step"] for r in records if "subset_test_elbo" in r] == [3, 6]
  pictures = tmp_path / "straight" / "pictures"
  grid = np.asarray(Image.open(pictures / "glimpses_test.png"))
  assert grid.shape == (8 * 9 + 1, 4 * 9 + 1)  # 8 digits x (3 glimpses + the image)
  for name in ("test", "samples"):
    with Image.open(pictures / f"animation_{name}.gif") as gif:
      assert gif.size == (8 * 9 + 1, 10)  # the 8 digits side by side

  config_one = tiny_draw_config(tiny_mnist)
  config_one.num_epochs = 1  # "interrupted" after the first epoch's checkpoint
  train.train_and_evaluate(config_one, str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert read_records(tmp_path / "resumed") == records


def test_an_animated_picture_is_written_as_a_gif_of_its_frames(tmp_path):
  from wn_jax.trainer.records import _MemberRecords
  record = _MemberRecords(str(tmp_path), mnist_draw.get_config(), None)
  frames = np.stack([np.full((5, 7, 1), 40 * i, np.uint8) for i in range(4)])
  record.write_images(3, {"animation": frames, "still": frames[2]})
  with Image.open(tmp_path / "pictures" / "animation.gif") as gif:
    assert (gif.n_frames, gif.size) == (4, (7, 5))
    gif.seek(2)
    assert np.asarray(gif.convert("L"))[0, 0] == 80
  assert np.asarray(Image.open(tmp_path / "pictures" / "still.png")).shape == (5, 7)
  with pytest.raises(ValueError, match="frames, H, W, C"):
    record.write_images(4, {"bad": frames[0, :, :, 0]})
