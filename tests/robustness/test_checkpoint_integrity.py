"""Damaged checkpoints are detected on restore and skipped for the newest intact one; nothing is
deleted (darling_jax/train/checkpoint.py, state_digest.py)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from darling_jax.errors import InputError
from darling_jax.train.checkpoint import Checkpointer, abstract_like
from darling_jax.train.state_digest import state_digest


def _state(shift: float):
  return {"w": jnp.arange(4096, dtype=jnp.float32) * 0.37 + shift,
          "b": (jnp.ones((64,), jnp.bfloat16) * shift),
          "key": jax.random.PRNGKey(int(shift)), "step": jnp.int32(int(shift))}


def _blobs(step_dir: pathlib.Path) -> list[pathlib.Path]:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return sorted(files, key=lambda p: p.stat().st_size)


def _flip_bytes(step_dir):
  blob = _blobs(step_dir)[-1]
  data = bytearray(blob.read_bytes())
  rng = np.random.default_rng(0)
  for i in rng.choice(len(data) // 2, size=min(64, len(data) // 2), replace=False) + len(data) // 4:
    data[i] ^= 0xFF
  blob.write_bytes(bytes(data))


def _truncate(step_dir):
  blob = _blobs(step_dir)[-1]
  blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])


DAMAGE = {
    "flipped_bytes": _flip_bytes,
    "truncated_blob": _truncate,
    "empty_METADATA": lambda d: (d / "state" / "_METADATA").write_text(""),
    "corrupt_data_json": lambda d: (d / "data" / "metadata").write_text("{not json"),
    "corrupt_meta_json": lambda d: (d / "meta" / "metadata").write_text("[1, 2"),
    "missing_state": lambda d: __import__("shutil").rmtree(d / "state"),
}


@pytest.fixture
def two_checkpoints(tmp_path):
  ckpt = Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False)
  ckpt.save(1, _state(1.0), {"pos": 1}, {"config": {"seed": 0}})
  ckpt.save(2, _state(2.0), {"pos": 2}, {"config": {"seed": 0}})
  ckpt.close()
  return tmp_path


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_falls_back_to_the_intact_one(two_checkpoints, damage):
  DAMAGE[damage](two_checkpoints / "checkpoints" / "2")
  ckpt = Checkpointer(two_checkpoints / "checkpoints", keep=3)
  restored = ckpt.restore_latest(abstract_like(_state(0.0)))
  assert restored.step == 1 and restored.data == {"pos": 1}
  for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(_state(1.0))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert len(restored.skipped) == 1 and "checkpoints/2 is damaged" in restored.skipped[0]
  # Moved aside, not deleted; the manager no longer sees it, so step 2 can be saved again.
  moved = list((two_checkpoints / "damaged_checkpoints").iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["2"]
  assert ckpt.latest_step() == 1
  ckpt.save(2, _state(2.0), {"pos": 2}, {"config": {}})
  ckpt.close()
  assert Checkpointer(two_checkpoints / "checkpoints").restore_latest(
      abstract_like(_state(0.0))).step == 2


def test_no_intact_checkpoint_is_one_clear_error(two_checkpoints):
  for step in ("1", "2"):
    _flip_bytes(two_checkpoints / "checkpoints" / step)
  with pytest.raises(InputError, match="no intact checkpoint"):
    Checkpointer(two_checkpoints / "checkpoints").restore_latest(abstract_like(_state(0.0)))


def test_digest_is_the_same_on_any_mesh_and_sees_one_flipped_bit():
  state = _state(3.0)
  mesh = Mesh(np.array(jax.devices()[:8]), ("fsdp",))
  sharded = dict(state, w=jax.device_put(state["w"], NamedSharding(mesh, P("fsdp"))))
  assert state_digest(sharded) == state_digest(state)
  w = np.asarray(state["w"]).copy()
  w.view(np.uint32)[1234] ^= 1 << 7
  assert state_digest(dict(state, w=jnp.asarray(w))) != state_digest(state)
  # Swapping two words keeps the plain sum; the index-weighted one still changes.
  w = np.asarray(state["w"]).copy()
  w[[10, 20]] = w[[20, 10]]
  assert state_digest(dict(state, w=jnp.asarray(w))) != state_digest(state)


def test_digest_is_recorded_in_the_meta(two_checkpoints):
  meta = json.loads((two_checkpoints / "checkpoints" / "2" / "meta" / "metadata").read_text())
  assert meta["state_digest"] == state_digest(_state(2.0))
