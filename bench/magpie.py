"""Magpie on the embedded model: instructions/s, and the drop and duplicate rates of N instructions.

    .venv/bin/python bench/magpie.py                 # N = 1000 (long on a small shared CPU)
    .venv/bin/python bench/magpie.py --n 200 --json out/bench-magpie.json

One run of the real engine (slots -> ``magpie`` step through the gateway, no call cache, ``on_drop:
keep`` so every draw is counted) measures:

- calls/s and kept instructions/s (wall clock), completion tokens/s;
- drop rate by reason, out of all draws (:data:`joydataforge.magpie.cleaning.DROP_REASONS`);
- duplicate rate among the kept instructions: exact (same :func:`exact_key`) and near (MinHash/LSH,
  estimated Jaccard >= 0.8 on what is left after exact dedup), i.e. what ``joyforge magpie`` removes
  between instructions and responses;
- the baseline named for the embedded backend: bare llama-cpp-python ``create_completion`` with the same
  pre-query, stops and sampling (``--baseline-n`` calls), so the engine's overhead shows as a ratio. The
  two alternate in ``--rounds`` rounds (the engine resumes into the same folder with a growing slot
  window), so both see the same load on a shared machine; the model is loaded before timing starts.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from joydataforge.evaluate.minhash_dedup import deduplicate
from joydataforge.executors.local import LocalExecutor
from joydataforge.magpie.cleaning import DROP_REASONS, exact_key
from joydataforge.magpie.slots import write_slots
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.pipeline import Pipeline


def _pipeline(out: Path, model: str, params: dict, limit: int, run_dir: str) -> Pipeline:
    return Pipeline.from_dict({
        "input": {"path": str(out / "slots.jsonl"), "limit": limit},
        "steps": [{"magpie": {"model": model, "on_drop": "keep", "params": params}}],
        "output": {"dir": str(out / run_dir)}, "run": {"cache": None, "progress": False, "concurrency": 4}})


async def _pre_query(model: str) -> tuple[str, list[str]]:
    from joydataforge.magpie.templates import resolve_format

    gateway = Gateway(ModelRegistry.load())
    client = gateway.model(model)
    fmt = resolve_format("auto", await client.chat_template(), [client.config.model])
    await gateway.close()
    return fmt.pre_query(), list(fmt.stops)


class Bare:
    """The same completions straight through llama-cpp-python: no gateway, steps or executor."""

    def __init__(self, model: str, params: dict):
        import llama_cpp

        from joydataforge.models.backends.smollm2 import resolve_model_path

        config = ModelRegistry.load().get(model)
        self.pre_query, self.stops = asyncio.run(_pre_query(model))
        self.llama = llama_cpp.Llama(model_path=str(resolve_model_path(config.model_path)), n_ctx=config.n_ctx,
                                     verbose=False)
        self.params = {**config.params, **params}
        self.calls = self.tokens = 0
        self.seconds = 0.0

    def run(self, n: int) -> None:
        started = time.perf_counter()
        for _ in range(n):
            reply = self.llama.create_completion(prompt=self.pre_query, stop=self.stops, seed=1000 + self.calls,
                                                 **self.params)
            self.tokens += reply["usage"]["completion_tokens"]
            self.calls += 1
        self.seconds += time.perf_counter() - started


def run_interleaved(n: int, model: str, params: dict, out: Path, baseline_n: int, rounds: int):
    """Engine and bare calls in alternating rounds, so both see the same machine load (CPUs are shared)."""
    write_slots(out / "slots.jsonl", n)
    LocalExecutor(_pipeline(out, model, params, 1, "warmup")).run_sync()  # load the model outside the timing
    bare = Bare(model, params) if baseline_n else None
    engine_seconds = 0.0
    summaries = []
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        summaries.append(LocalExecutor(_pipeline(out, model, params, n * r // rounds, "run")).run_sync().as_dict())
        engine_seconds += time.perf_counter() - started
        if bare:
            bare.run(baseline_n * r // rounds - baseline_n * (r - 1) // rounds)
        print(f"  round {r}/{rounds}: {n * r // rounds} draws", file=sys.stderr, flush=True)
    records = [json.loads(line) for line in (out / "run" / "data.jsonl").read_text("utf-8").splitlines()]
    completion_tokens = sum(s["models"].get(model, {}).get("completion_tokens", 0) for s in summaries)
    failed = sum(s["failed"] for s in summaries)
    return engine_seconds, records, completion_tokens, failed, bare


def duplicate_rates(kept: list[dict]) -> dict:
    seen: set[str] = set()
    unique = []
    for record in kept:
        key = exact_key(record["input"])
        if key not in seen:
            seen.add(key)
            unique.append(record)
    near = deduplicate(unique, "input", threshold=0.8) if unique else None
    n_near = len(near.removed) if near else 0
    total = len(kept) or 1
    return {"kept": len(kept), "exact_duplicates": len(kept) - len(unique), "near_duplicates": n_near,
            "exact_rate": (len(kept) - len(unique)) / total, "near_rate": n_near / total,
            "duplicate_rate": (len(kept) - len(unique) + n_near) / total,
            "unique_after_dedup": len(unique) - n_near}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="instruction draws (slots)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--baseline-n", type=int, default=50, help="bare llama-cpp-python calls (0: skip)")
    parser.add_argument("--rounds", type=int, default=5, help="engine/bare alternations")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    params = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}

    with tempfile.TemporaryDirectory() as tmp:
        seconds, records, completion_tokens, failed, bare = run_interleaved(
            args.n, args.model, params, Path(tmp), args.baseline_n, args.rounds)
    drops = Counter(r["magpie"].get("drop") for r in records if r["magpie"].get("drop"))
    kept = [r for r in records if not r["magpie"].get("drop")]
    dups = duplicate_rates(kept)
    result = {
        "n": args.n, "model": args.model, "params": params, "seconds": round(seconds, 2),
        "calls_per_s": round(args.n / seconds, 3), "instructions_per_s": round(len(kept) / seconds, 3),
        "completion_tokens_per_s": round(completion_tokens / seconds, 1),
        "kept": len(kept), "kept_rate": round(len(kept) / args.n, 4),
        "drop_rates": {reason: round(drops.get(reason, 0) / args.n, 4) for reason in DROP_REASONS},
        "drop_counts": {reason: drops.get(reason, 0) for reason in DROP_REASONS},
        "duplicates": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dups.items()},
        "languages": dict(Counter(r["language"] for r in kept)),
        "failed": failed,
    }
    if bare is not None:
        bare_rate = bare.calls / bare.seconds
        result["baseline"] = {"what": "bare llama-cpp-python create_completion, same prompt/stops/sampling, "
                                      f"interleaved with the engine in {args.rounds} rounds",
                              "calls": bare.calls, "calls_per_s": round(bare_rate, 3),
                              "completion_tokens_per_s": round(bare.tokens / bare.seconds, 1),
                              "engine_over_bare_calls_per_s": round(result["calls_per_s"] / bare_rate, 3),
                              "engine_over_bare_tokens_per_s": round(
                                  result["completion_tokens_per_s"] / (bare.tokens / bare.seconds), 3)}

    print(f"Magpie bench: {args.n} draws on {args.model} ({params}) in {seconds:.1f}s")
    print(f"  calls/s {result['calls_per_s']}   kept instructions/s {result['instructions_per_s']}   "
          f"completion tokens/s {result['completion_tokens_per_s']}")
    print(f"  kept {len(kept)} ({result['kept_rate']:.1%}); failed records {result['failed']}")
    for reason in DROP_REASONS:
        if drops.get(reason):
            print(f"  dropped {reason:<16} {drops[reason]:>5}  {drops[reason] / args.n:.1%}")
    print(f"  duplicates among kept: exact {dups['exact_duplicates']} ({dups['exact_rate']:.1%}), near "
          f"{dups['near_duplicates']} ({dups['near_rate']:.1%}), total {dups['duplicate_rate']:.1%}; "
          f"unique after dedup {dups['unique_after_dedup']}")
    print(f"  languages of kept: {result['languages']}")
    if "baseline" in result:
        base = result["baseline"]
        print(f"  baseline bare llama-cpp-python: {base['calls_per_s']} calls/s, {base['completion_tokens_per_s']} tok/s;"
              f" engine/bare = {base['engine_over_bare_calls_per_s']} (calls/s), "
              f"{base['engine_over_bare_tokens_per_s']} (tokens/s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False), "utf-8")


if __name__ == "__main__":
    main()
