"""Config values that used to be accepted and wrong, or to fail late: one InputError each, naming
the field the user set, before anything is built."""

import pytest

from darling_jax.errors import InputError
from darling_jax.train.config import TrainConfig
from darling_jax.train.overrides import apply_overrides


@pytest.mark.parametrize("override, field", [
    ("optim.b1=5", "optim.b1"), ("optim.b2=1.0", "optim.b2"), ("optim.b1=-0.1", "optim.b1"),
    ("eval.num_prompts=0", "eval.num_prompts"), ("eval.num_samples=0", "eval.num_samples"),
    ("eval.every=-1", "eval.every"), ("eval.top_p=0", "eval.top_p"),
    ("sampler.num_samples=1", "sampler.num_samples"), ("seed=9223372036854775808", "seed"),
    ("seed=-1", "seed"),
])
def test_bad_values_name_their_field(override, field):
  with pytest.raises(InputError) as e:
    apply_overrides(TrainConfig(), [override])
  assert field in str(e.value)


@pytest.mark.slow
def test_readme_generate_example_with_the_packaged_model_name():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  out = subprocess.run([sys.executable, "-m", "darling_jax", "generate", "--model", "smollm2",
                        "--prompt", "What is the capital of France?", "--chat", "--greedy",
                        "--max-new-tokens", "8"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  assert "Paris" in out.stdout


def test_workdir_that_is_a_file_and_disk_errors_are_one_line(tmp_path, capsys):
  from darling_jax.cli.main import main  # pylint: disable=import-outside-toplevel

  blocker = tmp_path / "file"
  blocker.write_text("x")
  code = main(["train", "--config", "configs/smoke.py", f"workdir={blocker}", "--no-progress"])
  err = capsys.readouterr().err.strip().splitlines()  # the start banner, then the error
  assert code == 2 and len(err) == 2 and "workdir" in err[-1] and str(blocker) in err[-1]
  code = main(["train", "--config", "configs/smoke.py", f"workdir={blocker}/sub"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 2 and "cannot be created" in err[-1]


def test_prompt_that_is_not_utf8_is_one_error(capsys):
  from darling_jax.cli.main import main  # pylint: disable=import-outside-toplevel

  code = main(["generate", "--prompt", "caf\udce9", "--max-new-tokens", "2"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "--prompt" in err[0] and "UTF-8" in err[0]


def test_chat_message_prompts_reach_quality_functions():
  from darling_jax.rewards.protocol import check_batch, prompt_text  # noqa: E501 pylint: disable=import-outside-toplevel

  chat = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"})
  assert check_batch([chat, "plain"], [["4"], ["5"]], {}) == (2, 1)
  assert prompt_text(chat) == "system: Be brief.\n\nuser: 2+2?"
  assert prompt_text(({"role": "user", "content": "hi"},)) == "hi"
  with pytest.raises(InputError, match=r"prompts\[0\]"):
    check_batch([({"role": 1},)], [["x"]], {})


@pytest.mark.slow
def test_training_on_chat_message_prompts_runs(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  data = tmp_path / "chat.jsonl"
  data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {i}+2?"}],
                                      "answer": str(i + 2)}) + "\n" for i in range(16)))
  out = subprocess.run([sys.executable, "-m", "darling_jax", "train", "--config",
                        "configs/smoke.py", "--no-progress", f"workdir={tmp_path / 'run'}",
                        "steps=2", "diversity.source=ngram", f"data.dataset={data}",
                        "data.answer_field=answer", "quality.functions=math_verify:1.0"],
                       capture_output=True, text=True, timeout=900,
                       env={**__import__("os").environ, "XLA_FLAGS": ""})
  assert out.returncode == 0, out.stderr[-2000:]
  assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 2
