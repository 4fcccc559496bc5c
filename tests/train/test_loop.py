"""Tests `darling_jax/train/loop.py` end to end through the CLI: resume after SIGTERM and kill -9
ends exactly as an uninterrupted run; a non-finite update never reaches a checkpoint."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from testing_support.checkpoints import restore_state_leaves
from testing_support.smoke_runs import logged_metrics, one_device_env, smoke_cmd

pytestmark = pytest.mark.slow
_cmd, _env, _metrics = smoke_cmd, one_device_env, logged_metrics


def _wait_for_step(proc, workdir, step, timeout=600):
  path = workdir / "metrics.jsonl"
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"run exited early with {proc.returncode}: {proc.stderr.read()}")
    if path.exists() and any(json.loads(line)["step"] >= step
                             for line in path.read_text().splitlines() if line.strip()):
      return
    time.sleep(0.2)
  raise AssertionError("timed out waiting for the run")



def test_sigterm_and_kill9_resume_exactly(tmp_path):
  ref = tmp_path / "ref"
  subprocess.run(_cmd(ref), env=_env(), check=True, capture_output=True, timeout=900)

  run = tmp_path / "run"
  # 1) SIGTERM after step 0: the run checkpoints and exits with 143.
  proc = subprocess.Popen(_cmd(run), env=_env(), stderr=subprocess.PIPE, text=True)
  _wait_for_step(proc, run, 0)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 143
  saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] >= 1
  # 2) resume with the same command, then kill -9 mid-run.
  proc = subprocess.Popen(_cmd(run), env=_env(), stderr=subprocess.PIPE, text=True)
  _wait_for_step(proc, run, saved[-1] + 1)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  # 3) resume again to the end.
  subprocess.run(_cmd(run), env=_env(), check=True, capture_output=True, timeout=900)

  got, want = _metrics(run), _metrics(ref)
  assert [r["step"] for r in got] == [0, 1, 2, 3]
  assert got == want  # every logged number, step for step (timings excluded)
  for a, b in zip(restore_state_leaves(run, 4), restore_state_leaves(ref, 4)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (run / "tensorboard").is_dir() and (run / "config.json").exists()
  # The saved config is the one that ran: derived values are recorded, not the file's blanks.
  saved = json.loads((run / "config.json").read_text())
  assert saved["sampler"]["stop_ids"], "the tokenizer's stop ids are recorded"
  assert saved["update"]["temperature"] == saved["sampler"]["temperature"]
  assert saved["update"]["recompute_old_logprobs"] is False  # no sampling filter in smoke.py


def test_nonfinite_update_is_never_checkpointed(tmp_path):
  # lr = 1e30: step 0's update is finite but huge (Adam steps ~ lr); step 1's forward overflows.
  work = tmp_path / "nan"
  out = subprocess.run(_cmd(work, "optim.learning_rate=1e30"), env=_env(), capture_output=True,
                       text=True, timeout=900)
  assert out.returncode != 0
  failed = [line for line in out.stderr.splitlines() if "non-finite update" in line]
  assert failed, out.stderr
  bad_step = int(failed[0].split("step ")[1].split(":")[0])
  saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert all(s <= bad_step for s in saved)  # the failing update (step bad_step + 1) never saved
  for s in saved:
    assert all(np.all(np.isfinite(np.asarray(x))) for x in restore_state_leaves(work, s))
  metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["step"] == bad_step and metrics[-1]["nonfinite"] == 1.0
