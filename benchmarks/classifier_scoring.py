"""Pair-scoring throughput: the jitted all-pairs scorer against transformers (torch), side by side.

Scores B groups of G answers (all G(G-1)/2 pairs of each) four ways, from strings to probabilities:

  jax_cross     PairScorer, cross-encoder, one jitted call for every pair of every group
                (one order per pair, like the reference; bucketed shapes, micro-batched encoder);
  jax_bi        PairScorer, bi-encoder: G encoder passes per group instead of G(G-1)/2;
  torch_loop    transformers BertForSequenceClassification, one pair per forward (as NoveltyBench's
                `classifier_score` and the reference evaluation do);
  torch_batch   the same model, `--torch-batch` pairs per padded forward.

All cross-encoder rows are `[CLS] a [SEP] b [SEP]` with each answer truncated to --max-tokens,
so the four do the same work per pair (bi mode does less by design). Answers come from the
NoveltyBench human-labelled pairs (real lengths: median ~450 tokens, so nearly every answer fills
--max-tokens) when ../shared/data is present, else random words.

The compute floor is FLOPs / peak: per cross row of n tokens, 2 * P_ne * n + 4 * Y * n^2 * D
(P_ne non-embedding parameters, Y layers, D width; QK^T and AV), at --peak-gflops.

  python benchmarks/classifier_scoring.py                       # CPU, MiniLM (real weights)
  python benchmarks/classifier_scoring.py --device gpu --model-shape bert-base --groups 256 \
      --micro-batch 1024 --peak-gflops 989000                   # GPU later (random weights)
  python benchmarks/classifier_scoring.py --length words --jax-only --groups 2
      # cross rows at the reference's default cut: (max_len - 3) // 2 words per answer
      # (MiniLM: 254 words, rows up to 512 tokens), longest-first truncation of the pair

--length tokens (default) cuts each answer to --max-tokens tokens on its own (NoveltyBench's
layout); --length words cuts it to --answer-max-words words (0: the reference's default for the
encoder) and truncates the pair to the encoder's length, as the scorer does in training.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

SHAPES = {  # BERT-family shapes for random-weight runs (D, layers, heads, mlp)
    "minilm": None,  # the packaged all-MiniLM-L6-v2 (real weights)
    "bert-base": (768, 12, 12, 3072),
    "bert-large": (1024, 24, 16, 4096),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
  p.add_argument("--model-shape", choices=sorted(SHAPES), default="minilm")
  p.add_argument("--groups", type=int, default=8, help="B groups per call")
  p.add_argument("--group-size", type=int, default=8, help="G answers per group")
  p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer")
  p.add_argument("--micro-batch", type=int, default=64, help="JAX rows per encoder call")
  p.add_argument("--torch-batch", type=int, default=64, help="pairs per batched torch forward")
  p.add_argument("--torch-loop-pairs", type=int, default=32,
                 help="pairs timed in the one-pair torch loop (it is slow)")
  p.add_argument("--repeats", type=int, default=2, help="timed JAX calls after the compile")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--peak-gflops", type=float, default=64.0,
                 help="device peak for the floor (default: this 2-core Zen1 CPU, AVX2 FMA: "
                      "2 cores x 2.0 GHz x 16 FP32 FLOP/cycle)")
  p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
  p.add_argument("--json", default=None, help="also write the results here")
  p.add_argument("--length", choices=["tokens", "words"], default="tokens",
                 help="per-answer cut of cross rows: --max-tokens tokens, or words")
  p.add_argument("--answer-max-words", type=int, default=0,
                 help="--length words: words per answer (0: (max_len - 3) // 2)")
  p.add_argument("--jax-only", action="store_true", help="skip the torch baselines")
  return p.parse_args(argv)


def answers(n: int, seed: int = 0) -> list[str]:
  import numpy as np

  data = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "noveltybench" \
      / "classifier_pairs_train.jsonl"
  rng = np.random.default_rng(seed)
  if data.exists():
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    pool = [r["generation_0"] for r in rows] + [r["generation_1"] for r in rows]
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
  words = ["alpha", "beta", "gamma", "delta", "story", "answer", "river", "light", "stone"]
  return [" ".join(rng.choice(words, size=300)) for _ in range(n)]


def encoder_folder(args, tmp: pathlib.Path) -> pathlib.Path:
  """The real MiniLM, or a random-weight BERT of the requested shape written as a HF folder."""
  from darling_jax.models import encoders
  from darling_jax.models.encoders import bert

  base = encoders.default_encoder_path()
  if SHAPES[args.model_shape] is None:
    return base
  import shutil

  from flax import nnx

  D, Y, N, F = SHAPES[args.model_shape]
  cfg = bert.Config(vocab_size=30522, hidden_size=D, num_layers=Y, num_heads=N,
                    intermediate_size=F, max_position_embeddings=512)
  bert.export(bert.Model(cfg, rngs=nnx.Rngs(0)), tmp)
  for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copyfile(base / name, tmp / name)
  return tmp


def measured_matmul_gflops(repeats: int = 200) -> float:
  """Best-case dense throughput here: an in-cache [256, 384] x [384, 1536] f32 matmul in JAX."""
  import jax
  import jax.numpy as jnp

  x, w = jnp.ones((256, 384)), jnp.ones((384, 1536))
  f = jax.jit(lambda a, b: a @ b)
  f(x, w).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    f(x, w).block_until_ready()
  return 2 * 256 * 384 * 1536 * repeats / (time.perf_counter() - t0) / 1e9


def flops_per_row(cfg, n: int) -> float:
  D, F, Y = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  non_embed = Y * (4 * D * D + 2 * D * F) + (D * D)  # + pooler
  return 2.0 * non_embed * n + 4.0 * Y * n * n * D


def run_jax(args, folder, groups, mode) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from darling_jax.diversity.classifier import ClassifierConfig, PairClassifier, PairMode
  from darling_jax.diversity.classifier_train import with_head
  from darling_jax.diversity.pair_scoring import PairScorer, ScoringShapes
  from darling_jax.models import encoders

  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  enc, tok = encoders.load_encoder(folder, dtype=dtype)
  pm = PairMode(mode)
  if pm == PairMode.CROSS:
    enc = with_head(enc, "bert", 2, 0)
  lengths = ({"answer_max_tokens": args.max_tokens} if args.length == "tokens" else
             {"answer_max_words": args.answer_max_words or None})
  cfg = ClassifierConfig(mode=pm, max_tokens=args.max_tokens, symmetric=False,
                         short_rule_words=None, windows=1, bag_tokens=4 * args.max_tokens,
                         **lengths)
  scorer = PairScorer(PairClassifier(enc, cfg, rngs=nnx.Rngs(0)), tok,
                      ScoringShapes(micro_batch=args.micro_batch))
  t0 = time.perf_counter()
  jax.block_until_ready(scorer(groups))
  first = time.perf_counter() - t0
  host, total = [], []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    rows = scorer.rows(groups)
    t1 = time.perf_counter()
    jax.block_until_ready(scorer.score_rows(rows))
    t2 = time.perf_counter()
    host.append(t1 - t0)
    total.append(t2 - t0)
  B, G = len(groups), len(groups[0])
  pairs = B * G * (G - 1) // 2
  t = min(total)
  return {"pairs": pairs, "seconds": t, "pairs_per_s": pairs / t,
          "host_tokenize_s": min(host), "compile_and_first_call_s": first,
          "rows": int(rows.valid_P.sum()), "padded_rows": int(rows.valid_P.shape[0]),
          "row_length": int(rows.input_ids_PxL.shape[1]),
          "mean_row_tokens": float(rows.attention_mask_PxL[rows.valid_P].sum(1).mean()),
          "answer_cut": str(scorer.cut), "config": enc.config}


def run_torch(args, folder, groups) -> dict:
  import torch
  import transformers

  torch.set_num_threads(args.threads)
  dev = "cuda" if args.device == "gpu" else "cpu"
  dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  model = transformers.BertForSequenceClassification.from_pretrained(
      folder, num_labels=2, dtype=dtype).to(dev).eval()
  pairs = [(g[i], g[j]) for g in groups for i in range(len(g)) for j in range(i + 1, len(g))]

  def encode(a, b):
    ids = [tok.cls_token_id]
    for s in (a, b):  # NoveltyBench's classifier_score layout: per-answer truncation
      ids += tok.encode(s, truncation=True, max_length=args.max_tokens, add_special_tokens=False)
      ids.append(tok.sep_token_id)
    first = ids.index(tok.sep_token_id) + 1
    return ids, [0] * first + [1] * (len(ids) - first)

  def sync():
    if dev == "cuda":
      torch.cuda.synchronize()

  out = {}
  with torch.inference_mode():
    # Evenly spaced over all pairs, so the loop sees the same mix of answer lengths as the rest
    # (the first group alone can be much shorter or longer than average).
    loop = pairs[:: max(1, len(pairs) // args.torch_loop_pairs)][: args.torch_loop_pairs]
    model(**{k: torch.tensor([v], device=dev) for k, v in zip(
        ("input_ids", "token_type_ids"), encode(*loop[0]))})  # warm-up
    sync()
    t0 = time.perf_counter()
    for a, b in loop:
      ids, tt = encode(a, b)
      logits = model(input_ids=torch.tensor([ids], device=dev),
                     token_type_ids=torch.tensor([tt], device=dev)).logits
      logits.softmax(-1)[0, 1].item()
    sync()
    t = time.perf_counter() - t0
    mean_len = lambda ps: sum(len(encode(a, b)[0]) for a, b in ps) / len(ps)
    out["torch_loop"] = {"pairs": len(loop), "seconds": t, "pairs_per_s": len(loop) / t,
                         "mean_row_tokens": mean_len(loop)}
    t0 = time.perf_counter()
    for s in range(0, len(pairs), args.torch_batch):
      enc = [encode(a, b) for a, b in pairs[s:s + args.torch_batch]]
      L = max(len(i) for i, _ in enc)
      ids = torch.tensor([i + [tok.pad_token_id] * (L - len(i)) for i, _ in enc], device=dev)
      tt = torch.tensor([t_ + [0] * (L - len(t_)) for _, t_ in enc], device=dev)
      mask = torch.tensor([[1] * len(i) + [0] * (L - len(i)) for i, _ in enc], device=dev)
      model(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits.softmax(-1)[:, 1].cpu()
    sync()
    t = time.perf_counter() - t0
    out["torch_batch"] = {"pairs": len(pairs), "seconds": t, "pairs_per_s": len(pairs) / t,
                          "mean_row_tokens": mean_len(pairs)}
  return out


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import tempfile

  import jax

  groups_flat = answers(args.groups * args.group_size)
  groups = [groups_flat[b * args.group_size:(b + 1) * args.group_size] for b in range(args.groups)]
  with tempfile.TemporaryDirectory() as tmp:
    folder = encoder_folder(args, pathlib.Path(tmp))
    results = {"jax_cross": run_jax(args, folder, groups, "cross"),
               "jax_bi": run_jax(args, folder, groups, "bi")}
    if not args.jax_only:
      results.update(run_torch(args, folder, groups))
  cfg = results["jax_cross"].pop("config")
  results["jax_bi"].pop("config")
  L = results["jax_cross"]["row_length"]
  n_real = round(results["jax_cross"]["mean_row_tokens"])  # real tokens of a cross row
  floor = flops_per_row(cfg, n_real) / (args.peak_gflops * 1e9)
  measured = measured_matmul_gflops() if args.device == "cpu" else None
  bi_flops_per_pair = flops_per_row(cfg, args.max_tokens + 2) * args.group_size / (
      args.group_size * (args.group_size - 1) / 2)
  report = {
      "command": " ".join([pathlib.Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "device": f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} cpus)",
      "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
      "model_shape": args.model_shape, "dtype": args.dtype,
      "groups": args.groups, "group_size": args.group_size, "max_tokens": args.max_tokens,
      "cross_row_tokens": n_real, "padded_row_length": L,
      "flops_per_cross_row": flops_per_row(cfg, n_real),
      "floor_pairs_per_s": 1.0 / floor, "peak_gflops": args.peak_gflops,
      "measured_matmul_gflops": measured,
      "floor_pairs_per_s_at_measured_matmul": None if measured is None
      else measured * 1e9 / flops_per_row(cfg, n_real),
      "bi_flops_per_pair": bi_flops_per_pair,
      "bi_floor_pairs_per_s": args.peak_gflops * 1e9 / bi_flops_per_pair,
      "results": results,
      "length": args.length,
  }
  if not args.jax_only:
    report.update({
        "speedup_jax_cross_vs_torch_loop": results["jax_cross"]["pairs_per_s"]
        / results["torch_loop"]["pairs_per_s"],
        "speedup_jax_cross_vs_torch_batch": results["jax_cross"]["pairs_per_s"]
        / results["torch_batch"]["pairs_per_s"],
        "speedup_jax_bi_vs_torch_loop": results["jax_bi"]["pairs_per_s"]
        / results["torch_loop"]["pairs_per_s"],
    })
  text = json.dumps(report, indent=2, default=str)
  print(text)
  if args.json:
    pathlib.Path(args.json).write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
