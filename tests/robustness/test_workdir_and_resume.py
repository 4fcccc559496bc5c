"""A second trainer on a workdir is refused; a resume that changes the run's meaning is refused;
a damaged newest checkpoint is skipped and the resumed run ends bit-identical (end to end)."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from testing_support.checkpoints import restore_state_leaves
from testing_support.smoke_runs import logged_metrics, one_device_env, smoke_cmd

from darling_jax.errors import InputError
from darling_jax.train.config import load_config_file
from darling_jax.train.overrides import apply_overrides, to_dict
from darling_jax.train.resume_check import MAY_CHANGE, changed_fields, check_resume
from darling_jax.train.workdir_lock import LOCK_NAME, WorkdirLock

REPO = pathlib.Path(__file__).resolve().parents[2]


def _smoke(*overrides):
  return apply_overrides(load_config_file(REPO / "configs/smoke.py"), list(overrides))


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
  with WorkdirLock(tmp_path):
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from darling_jax.train.workdir_lock import "
         "WorkdirLock; WorkdirLock(sys.argv[1]).acquire()", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert other.returncode != 0
    assert f"pid {os.getpid()} on {socket.gethostname()}" in other.stderr
  assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  (tmp_path / LOCK_NAME).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "then"}))
  with WorkdirLock(tmp_path):
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_changed_fields_names_what_changes_the_run():
  saved = json.loads(json.dumps(to_dict(_smoke())))
  assert changed_fields(saved, _smoke("steps=99", "eval.every=3", "log_every=5")) == []
  changed = changed_fields(saved, _smoke("sampler.num_samples=4",
                                         "update.reward.fusion.mode=quality_only"))
  assert changed == ["sampler.num_samples", "update.reward.fusion.mode"]
  with pytest.raises(InputError, match="sampler.num_samples .checkpoint: 8"):
    check_resume(saved, _smoke("sampler.num_samples=4"), step=4, allow=False)
  assert check_resume(saved, _smoke("sampler.num_samples=4"), step=4, allow=True) == [
      "sampler.num_samples"]
  assert "steps" in MAY_CHANGE
  # A field a newer version added (absent from the checkpoint) is not a change the user made.
  older = json.loads(json.dumps(saved))
  del older["quality"]["step_timeout_s"]
  assert changed_fields(older, _smoke()) == []


# ---- end to end through the CLI ---------------------------------------------------------------

_cmd, _env = smoke_cmd, one_device_env


def _metrics(workdir):
  return {r["step"]: r for r in logged_metrics(workdir)}


@pytest.mark.slow
def test_resume_guards_end_to_end(tmp_path):
  ref = tmp_path / "ref"
  subprocess.run(_cmd(ref, "profile_steps=1,2"), env=_env(), check=True, capture_output=True,
                 timeout=900)
  assert len((ref / "config_history.jsonl").read_text().splitlines()) == 1
  assert any(p.is_file() for p in (ref / "profile").rglob("*.xplane.pb"))  # step 1's trace

  # A damaged newest checkpoint (flipped bytes in its largest state blob) is skipped: the run
  # resumes from step 3, redoes step 3 and ends exactly where the uninterrupted run did.
  run = tmp_path / "run"
  shutil.copytree(ref, run)
  blob = max((p for p in (run / "checkpoints" / "4" / "state").rglob("*")
              if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)
  data = bytearray(blob.read_bytes())
  for i in range(len(data) // 3, len(data) // 3 + 64):
    data[i] ^= 0x5A
  blob.write_bytes(bytes(data))
  out = subprocess.run(_cmd(run), env=_env(), capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr
  assert "checkpoints/4 is damaged" in out.stderr and "resuming from step 3" in out.stderr
  for a, b in zip(restore_state_leaves(run, 4), restore_state_leaves(ref, 4)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _metrics(run)[3] == _metrics(ref)[3]
  assert [p.name.split("-")[0] for p in (run / "damaged_checkpoints").iterdir()] == ["4"]
  assert len((run / "config_history.jsonl").read_text().splitlines()) == 2

  # A config that changes what the checkpoint means is refused, naming the field; nothing written.
  before = (ref / "metrics.jsonl").read_text()
  out = subprocess.run(_cmd(ref, "sampler.num_samples=4", "steps=6"), env=_env(),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 2 and "sampler.num_samples" in out.stderr
  assert len(out.stderr.strip().splitlines()) <= 3, out.stderr  # one message, no traceback
  assert (ref / "metrics.jsonl").read_text() == before
  # Fewer steps than done: says so and exits 0 (an override after a flag is still an override).
  out = subprocess.run([*_cmd(ref)[:-1], "--no-progress", "diversity.source=ngram", "steps=2"],
                       env=_env(), capture_output=True, text=True, timeout=900)
  assert out.returncode == 0 and "nothing to do" in out.stderr, out.stderr

  # A second trainer on a running workdir is refused at once, naming the first.
  live = tmp_path / "live"
  first = subprocess.Popen(_cmd(live, "steps=1000"), env=_env(), stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.time() + 300
    while not (live / LOCK_NAME).exists() and time.time() < deadline:
      time.sleep(0.2)
    second = subprocess.run(_cmd(live, "steps=1000"), env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "in use by another trainer" in second.stderr
  finally:
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=300)
