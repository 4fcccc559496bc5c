"""Progress without a terminal: plain lines every log_every steps (SLURM, nohup, CI)."""

import json

from darling_jax.train.metrics_writer import MetricsWriter


def test_plain_progress_lines_without_a_tty(tmp_path, capsys):
  writer = MetricsWriter(tmp_path, total_steps=5, log_every=2, progress=True)
  for step in range(5):
    writer.write(step, {"quality": 0.5 + step / 10, "step_s": 1.25, "note": "x"})
  writer.close()
  lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("darling step")]
  assert lines == ["darling step 1/5 quality=0.5 step_s=1.25",
                   "darling step 3/5 quality=0.7 step_s=1.25",
                   "darling step 5/5 quality=0.9 step_s=1.25"]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]


def test_no_progress_prints_nothing(tmp_path, capsys):
  writer = MetricsWriter(tmp_path, total_steps=2, progress=False)
  writer.write(0, {"quality": 1.0})
  writer.close()
  assert "darling step" not in capsys.readouterr().err
