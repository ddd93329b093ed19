"""Magpie on the embedded model: instructions/s, and the drop and duplicate rates of N instructions.

    .venv/bin/python bench/magpie.py                 # N = 1000 (long on a small shared CPU)
    .venv/bin/python bench/magpie.py --n 200 --json out/bench-magpie.json
    .venv/bin/python bench/magpie.py --n 200 --samples-per-call 4   # also n=4 samples per request

One run of the real engine (slots -> ``magpie`` step through the gateway, no call cache, ``on_drop:
keep`` so every draw is counted) measures:

- calls/s and kept instructions/s (wall clock), completion tokens/s;
- drop rate by reason, out of all draws (:data:`joydataforge.methods.magpie.cleaning.DROP_REASONS`);
- duplicate rate among the kept instructions: exact (same :func:`exact_key`) and near (MinHash/LSH,
  estimated Jaccard >= 0.8 on what is left after exact dedup), i.e. what ``joyforge magpie`` removes
  between instructions and responses;
- the baseline named for the embedded backend: bare llama-cpp-python ``create_completion`` with the same
  pre-query, stops and sampling (``--baseline-n`` calls), so the engine's overhead shows as a ratio. The
  two alternate in ``--rounds`` rounds (the engine resumes into the same folder with a growing slot
  window), so both see the same load on a shared machine; the model is loaded before timing starts.

With ``--samples-per-call K`` the engine draws ``samples: K`` instructions per slot (N/K slots, rounded up),
and a second engine run in the same rounds draws them ``samples_per_call: K`` at a time (``complete_n``,
one request per K samples); kept instructions/s of the two are printed with their ratio.
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

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.methods.magpie.cleaning import DROP_REASONS, exact_key
from joydataforge.methods.magpie.slots import write_slots
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.text.minhash_dedup import deduplicate


def _pipeline(
    out: Path, model: str, params: dict, limit: int, run_dir: str, samples: int = 1, samples_per_call: int = 1
) -> Pipeline:
    return Pipeline.from_dict(
        {
            "input": {"path": str(out / "slots.jsonl"), "limit": limit},
            "steps": [
                {
                    "magpie": {
                        "model": model,
                        "on_drop": "keep",
                        "params": params,
                        "samples": samples,
                        "samples_per_call": samples_per_call,
                    }
                }
            ],
            "output": {"dir": str(out / run_dir)},
            "run": {"cache": None, "progress": False, "concurrency": 4},
        }
    )


async def _pre_query(model: str) -> tuple[str, list[str]]:
    from joydataforge.methods.magpie.templates import resolve_format

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
        self.llama = llama_cpp.Llama(
            model_path=str(resolve_model_path(config.model_path)), n_ctx=config.n_ctx, verbose=False
        )
        self.params = {**config.params, **params}
        self.calls = self.tokens = 0
        self.seconds = 0.0

    def run(self, n: int) -> None:
        started = time.perf_counter()
        for _ in range(n):
            reply = self.llama.create_completion(
                prompt=self.pre_query, stop=self.stops, seed=1000 + self.calls, **self.params
            )
            self.tokens += reply["usage"]["completion_tokens"]
            self.calls += 1
        self.seconds += time.perf_counter() - started


class Arm:
    """One engine configuration, resumed round after round into its own folder."""

    def __init__(self, out: Path, model: str, params: dict, run_dir: str, samples: int, samples_per_call: int):
        self.out, self.model, self.params, self.run_dir = out, model, params, run_dir
        self.samples, self.samples_per_call = samples, samples_per_call
        self.seconds = 0.0
        self.summaries: list[dict] = []

    def run(self, slots: int) -> None:
        pipeline = _pipeline(
            self.out, self.model, self.params, slots, self.run_dir, self.samples, self.samples_per_call
        )
        started = time.perf_counter()
        self.summaries.append(LocalExecutor(pipeline).run_sync().as_dict())
        self.seconds += time.perf_counter() - started

    def records(self) -> list[dict]:
        return [json.loads(line) for line in (self.out / self.run_dir / "data.jsonl").read_text("utf-8").splitlines()]

    def total(self, key: str) -> int:
        if key == "failed":
            return sum(s[key] for s in self.summaries)
        if key == "requests":
            return sum(int(s["steps"].get("magpie", {}).get("requests", 0)) for s in self.summaries)
        return sum(s["models"].get(self.model, {}).get(key, 0) for s in self.summaries)


def run_interleaved(
    n: int, model: str, params: dict, out: Path, baseline_n: int, rounds: int, samples_per_call: int = 1
):
    """Engine and bare calls in alternating rounds, so both see the same machine load (CPUs are shared);
    with ``samples_per_call`` K > 1, slots of K samples, and a second engine arm drawing K per request."""
    k = samples_per_call
    slots = -(-n // k)
    write_slots(out / "slots.jsonl", slots)
    LocalExecutor(_pipeline(out, model, params, 1, "warmup")).run_sync()  # load the model outside the timing
    bare = Bare(model, params) if baseline_n else None
    engine = Arm(out, model, params, "run", k, 1)
    grouped = Arm(out, model, params, "grouped", k, k) if k > 1 else None
    for r in range(1, rounds + 1):
        arms = [engine, grouped] if r % 2 else [grouped, engine]  # neither always runs first
        for arm in arms:
            if arm is not None:
                arm.run(slots * r // rounds)
        if bare:
            bare.run(baseline_n * r // rounds - baseline_n * (r - 1) // rounds)
        print(f"  round {r}/{rounds}: {slots * r // rounds * k} draws", file=sys.stderr, flush=True)
    return engine, grouped, bare


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
    return {
        "kept": len(kept),
        "exact_duplicates": len(kept) - len(unique),
        "near_duplicates": n_near,
        "exact_rate": (len(kept) - len(unique)) / total,
        "near_rate": n_near / total,
        "duplicate_rate": (len(kept) - len(unique) + n_near) / total,
        "unique_after_dedup": len(unique) - n_near,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="instruction draws (slots)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--baseline-n", type=int, default=50, help="bare llama-cpp-python calls (0: skip)")
    parser.add_argument("--rounds", type=int, default=5, help="engine/bare alternations")
    parser.add_argument(
        "--samples-per-call",
        type=int,
        default=1,
        help="K > 1: slots of K samples, drawn one per request and K per request (complete_n), "
        "compared in the same rounds",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.samples_per_call < 1:
        parser.error("--samples-per-call must be >= 1")
    params = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}

    with tempfile.TemporaryDirectory() as tmp:
        engine, grouped_arm, bare = run_interleaved(
            args.n, args.model, params, Path(tmp), args.baseline_n, args.rounds, args.samples_per_call
        )
        records = engine.records()
        grouped_records = grouped_arm.records() if grouped_arm else []
    seconds, completion_tokens, failed = engine.seconds, engine.total("completion_tokens"), engine.total("failed")
    draws = len(records)
    drops = Counter(r["magpie"].get("drop") for r in records if r["magpie"].get("drop"))
    kept = [r for r in records if not r["magpie"].get("drop")]
    dups = duplicate_rates(kept)
    result = {
        "n": draws,
        "model": args.model,
        "params": params,
        "seconds": round(seconds, 2),
        "calls_per_s": round(draws / seconds, 3),
        "instructions_per_s": round(len(kept) / seconds, 3),
        "completion_tokens_per_s": round(completion_tokens / seconds, 1),
        "kept": len(kept),
        "kept_rate": round(len(kept) / draws, 4),
        "drop_rates": {reason: round(drops.get(reason, 0) / draws, 4) for reason in DROP_REASONS},
        "drop_counts": {reason: drops.get(reason, 0) for reason in DROP_REASONS},
        "duplicates": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dups.items()},
        "languages": dict(Counter(r["language"] for r in kept)),
        "failed": failed,
    }
    if bare is not None:
        bare_rate = bare.calls / bare.seconds
        result["baseline"] = {
            "what": "bare llama-cpp-python create_completion, same prompt/stops/sampling, "
            f"interleaved with the engine in {args.rounds} rounds",
            "calls": bare.calls,
            "calls_per_s": round(bare_rate, 3),
            "completion_tokens_per_s": round(bare.tokens / bare.seconds, 1),
            "engine_over_bare_calls_per_s": round(result["calls_per_s"] / bare_rate, 3),
            "engine_over_bare_tokens_per_s": round(result["completion_tokens_per_s"] / (bare.tokens / bare.seconds), 3),
        }
    if grouped_arm is not None:
        result["samples_per_slot"] = args.samples_per_call
        g_kept = sum(1 for r in grouped_records if not r["magpie"].get("drop"))
        g_seconds = grouped_arm.seconds
        result["grouped"] = {
            "what": f"samples_per_call {args.samples_per_call} (one request per {args.samples_per_call} samples), "
            "same slots, in the same rounds",
            "samples_per_call": args.samples_per_call,
            "draws": len(grouped_records),
            "requests": grouped_arm.total("requests"),
            "seconds": round(g_seconds, 2),
            "calls_per_s": round(len(grouped_records) / g_seconds, 3),
            "instructions_per_s": round(g_kept / g_seconds, 3),
            "completion_tokens_per_s": round(grouped_arm.total("completion_tokens") / g_seconds, 1),
            "kept": g_kept,
            "kept_rate": round(g_kept / max(len(grouped_records), 1), 4),
            "failed": grouped_arm.total("failed"),
            "over_n1_instructions_per_s": round(g_kept / g_seconds / (len(kept) / seconds), 3) if kept else None,
            "over_n1_calls_per_s": round(len(grouped_records) / g_seconds / (draws / seconds), 3),
        }

    print(
        f"Magpie bench: {draws} draws on {args.model} ({params}) in {seconds:.1f}s"
        + (f", {args.samples_per_call} samples per slot, one per request" if grouped_arm else "")
    )
    print(
        f"  calls/s {result['calls_per_s']}   kept instructions/s {result['instructions_per_s']}   "
        f"completion tokens/s {result['completion_tokens_per_s']}"
    )
    print(f"  kept {len(kept)} ({result['kept_rate']:.1%}); failed records {result['failed']}")
    for reason in DROP_REASONS:
        if drops.get(reason):
            print(f"  dropped {reason:<16} {drops[reason]:>5}  {drops[reason] / draws:.1%}")
    print(
        f"  duplicates among kept: exact {dups['exact_duplicates']} ({dups['exact_rate']:.1%}), near "
        f"{dups['near_duplicates']} ({dups['near_rate']:.1%}), total {dups['duplicate_rate']:.1%}; "
        f"unique after dedup {dups['unique_after_dedup']}"
    )
    print(f"  languages of kept: {result['languages']}")
    if "baseline" in result:
        base = result["baseline"]
        print(
            f"  baseline bare llama-cpp-python: {base['calls_per_s']} calls/s, {base['completion_tokens_per_s']} tok/s;"
            f" engine/bare = {base['engine_over_bare_calls_per_s']} (calls/s), "
            f"{base['engine_over_bare_tokens_per_s']} (tokens/s)"
        )
    if "grouped" in result:
        g = result["grouped"]
        print(
            f"  n={g['samples_per_call']} per request: {g['draws']} draws in {g['requests']} requests, "
            f"{g['seconds']}s; calls/s {g['calls_per_s']}   kept instructions/s {g['instructions_per_s']} "
            f"(kept {g['kept_rate']:.1%})"
        )
        print(
            f"  n={g['samples_per_call']} over n=1: kept instructions/s {g['over_n1_instructions_per_s']}, "
            f"calls/s {g['over_n1_calls_per_s']}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False), "utf-8")


if __name__ == "__main__":
    main()
