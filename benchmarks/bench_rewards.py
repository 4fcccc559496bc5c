"""Throughput of Math-Verify verification: in-process vs DeadlinePool (1 and 2 workers)."""
import functools, json, os, random, re, sys, time

from darling_jax.rewards import MathVerifyReward
from darling_jax.rewards.deadline_pool import DeadlinePool, PoolConfig
from darling_jax.rewards.math_verify import MathVerifyConfig, fast_path


def cpu(pid):
  f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
  return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def reform(g):
  s = g.replace("\\frac", "\\dfrac").replace("\\left", "").replace("\\right", "")
  return s if "\\text" in s else re.sub(r"\s+", "", s)


def main():
  rows = [json.loads(l) for l in open("/work/shared/data/math500/test.jsonl")]
  golds = [r["answer"] for r in rows]
  rng = random.Random(0)
  pairs = []
  for g in golds:
    pairs.append((g, reform(g)))           # correct, written differently
    pairs.append((g, rng.choice(golds)))   # wrong (another problem's answer)
  slow = [p for p in pairs if fast_path(*p) is None]
  print(f"pairs {len(pairs)}, needing sympy {len(slow)}, load {os.getloadavg()[0]:.1f}", flush=True)
  mode = sys.argv[1]
  if mode == "inproc":
    t = time.perf_counter()
    from darling_jax.rewards import verifier_process
    print(f"import+warm-up {time.perf_counter() - t:.2f}s")
    for rep in range(2):
      t = time.perf_counter(); c = time.process_time()
      for p in slow:
        verifier_process.verify_pair(p)
      dt = time.perf_counter() - t; dc = time.process_time() - c
      print(f"in-process pass {rep}: {len(slow) / dt:.1f} answers/s wall; CPU {dc / len(slow) * 1e3:.1f} ms/answer")
  elif mode == "pool":
    for w in (1, 2):
      pool = DeadlinePool("darling_jax.rewards.verifier_process:verify_pair",
                          MathVerifyConfig(timeout_s=10.0, num_workers=w).pool_config(), default=False)
      t = time.perf_counter(); pool.start(); print(f"{w} worker(s) start {time.perf_counter() - t:.2f}s")
      for rep in range(2):
        pids = pool.worker_pids()
        w0 = sum(cpu(p) for p in pids)
        t = time.perf_counter(); c = time.process_time()
        _, st = pool.map(slow)
        dt = time.perf_counter() - t; dc = time.process_time() - c
        wc = sum(cpu(p) for p in pids) - w0
        print(f"pool {w}w pass {rep}: {len(slow) / dt:.1f} answers/s wall; CPU workers "
              f"{wc / len(slow) * 1e3:.1f} ms/answer + parent {dc / len(slow) * 1e3:.2f} ms/answer; "
              f"timeouts {st.timed_out} max {st.max_item_s:.2f}s")
      pool.close()
  elif mode == "ipc":
    pool = DeadlinePool("operator:call", PoolConfig(num_workers=1))
    pool.start()
    items = [functools.partial(abs, -i) for i in range(5000)]
    for rep in range(2):
      pid = pool.worker_pids()[0]; w0 = cpu(pid)
      t = time.perf_counter(); c = time.process_time(); pool.map(items)
      dt = time.perf_counter() - t; dc = time.process_time() - c; wc = cpu(pid) - w0
      print(f"IPC round trip (trivial task, 1 worker): {dt / len(items) * 1e6:.0f} us/item wall; "
            f"CPU parent {dc / len(items) * 1e6:.0f} + worker {wc / len(items) * 1e6:.0f} us/item")
    pool.close()
  elif mode == "reward":
    # End to end: a B=64 x G=8 group set of realistic completions (fast path + dedup + pool).
    sel = rng.sample(rows, 64)
    comps = []
    for r in sel:
      g = r["answer"]
      opts = [f"... so the answer is $\\boxed{{{reform(g)}}}$", f"\\boxed{{{g}}}",
              f"\\boxed{{{rng.choice(golds)}}}", "I think it's \\boxed{7}"]
      comps.append([rng.choice(opts) for _ in range(8)])
    reward = MathVerifyReward(timeout_s=10.0, num_workers=2)
    reward.start()
    for rep in range(3):
      t = time.perf_counter()
      s = reward([r["problem"] for r in sel], comps, {"answer": [r["answer"] for r in sel]})
      dt = time.perf_counter() - t
      print(f"MathVerifyReward B=64 G=8 call {rep}: {dt:.2f}s = {512 / dt:.0f} completions/s, "
            f"pool items {reward.last_stats.items}, mean q {s.mean():.2f}")
    reward.close()


if __name__ == "__main__":
  main()
