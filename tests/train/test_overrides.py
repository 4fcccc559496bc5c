"""Tests `darling_jax/train/overrides.py` and config validation: strict keys, typed values."""

import pathlib

import pytest

from darling_jax.errors import InputError
from darling_jax.rl.fusion import Fusion
from darling_jax.train.config import TrainConfig, load_config_file
from darling_jax.train.overrides import apply_overrides, to_dict

SMOKE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py"
CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_file_loads_and_validates(path):
  config = load_config_file(path)
  assert isinstance(config, TrainConfig)
  assert to_dict(config)["steps"] == config.steps


def test_dotted_overrides_with_types():
  base = load_config_file(SMOKE)
  c = apply_overrides(base, ["steps=7", "sampler.temperature=0.7",
                             "update.reward.fusion.mode=quality_only", "optim.learning_rate=2e-5",
                             "mesh.data=-1", "quality.functions=gsm8k:0.5,math_verify:0.5",
                             "sampler.stop_ids=1,2", "eval.every=0"])
  assert c.steps == 7 and c.sampler.temperature == 0.7
  assert c.update.reward.fusion.mode is Fusion.QUALITY_ONLY
  assert c.quality.functions == (("gsm8k", 0.5), ("math_verify", 0.5))
  assert c.sampler.stop_ids == (1, 2)
  assert base.steps != 7  # frozen: the original is untouched


@pytest.mark.parametrize("override, message", [
    ("stepz=3", "unknown config key 'stepz'.*did you mean 'steps'"),
    ("sampler.temprature=1", "did you mean 'temperature'"),
    ("steps=three", "steps: expects an integer"),
    ("update.reward.fusion.mode=sum", "unknown value 'sum'"),
    ("sampler=3", "is a config section"),
    ("update.mini_batches=3", "update.mini_batches.*does not divide"),
    ("sampler.top_p=1.5", "top_p"),
    ("data.batch_size=5", "update.mini_batches.*does not divide the 5"),
    ("noequals", "key=value"),
])
def test_bad_overrides_name_the_key(override, message):
  base = load_config_file(SMOKE)
  with pytest.raises(InputError, match=message):
    apply_overrides(base, [override])


def test_bad_config_file(tmp_path):
  with pytest.raises(InputError, match="config file not found"):
    load_config_file(tmp_path / "nope.py")
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return 3\n")
  with pytest.raises(InputError, match="returned int, not TrainConfig"):
    load_config_file(bad)


def test_related_overrides_are_validated_together():
  base = load_config_file(SMOKE)
  # mini_batches=3 alone does not divide the batch, but together with batch_size=6 it does.
  c = apply_overrides(base, ["update.mini_batches=3", "data.batch_size=6"])
  assert (c.update.mini_batches, c.data.batch_size) == (3, 6)
