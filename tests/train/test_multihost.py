"""Two processes x 4 CPU devices (gloo collectives) train like one process with 8 devices.

Tests `darling_jax/train/distributed.py` and the multi-host paths of the loop for real: separate
OS processes joined by `jax.distributed.initialize`, one global (data 2, fsdp 2, tensor 2) mesh.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from testing_support.checkpoints import restore_state_leaves

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
MESH = ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")


def _cmd(workdir):
  return [sys.executable, "-m", "darling_jax", "train", "--config", str(REPO / "configs/smoke.py"),
          "--no-progress", f"workdir={workdir}", "steps=2", "checkpoint_every=0",
          "diversity.source=ngram", *MESH]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]



def test_two_processes_match_one_process(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  single = tmp_path / "single"
  subprocess.run(_cmd(single), check=True, capture_output=True, timeout=900,
                 env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(_cmd(multi), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={
                                **env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                "DARLING_COORDINATOR": f"127.0.0.1:{port}",
                                "DARLING_NUM_PROCESSES": "2", "DARLING_PROCESS_ID": str(i)})
           for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "8 cpu device(s), 2 process(es)" in outs[0]
  # Only process 0 writes logs; both wrote their shards of the one checkpoint.
  assert (multi / "metrics.jsonl").read_text().count("\n") == 2
  for a, b in zip(restore_state_leaves(single, 2), restore_state_leaves(multi, 2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_sigterm_to_one_host_stops_both_at_the_same_saved_step(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  work = tmp_path / "preempt"
  port = _free_port()
  cmd = [*_cmd(work)[:-len(MESH) - 1], "diversity.source=ngram", "steps=1000",
         "checkpoint_every=0", *MESH]
  procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                 "DARLING_COORDINATOR": f"127.0.0.1:{port}",
                                 "DARLING_NUM_PROCESSES": "2", "DARLING_PROCESS_ID": str(i)})
           for i in range(2)]
  try:
    metrics = work / "metrics.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n")):
      assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)  # one host only, as a preempted pod VM
    outs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [143, 143], [o[-3000:] for o in outs]
  saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1 and 1 <= saved[0] < 1000
  # Both hosts saved their shards of that one step (a deadlock or two steps would show here).
  assert f"checkpoint saved at step {saved[0]}" in outs[0]
  assert f"checkpoint saved at step {saved[0]}" in outs[1]
