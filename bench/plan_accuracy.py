"""How close ``joyforge plan`` comes to the run it plans, on every example pipeline with the embedded model.

For each example: the plan without a pilot, the plan with ``--pilot P``, then the real run over the same window
with the same call cache (so the pilot's records come from the cache, as they would for a user), every request
of the run counted by step and model (cache hits included, with their stored token counts). Printed per
example: planned / actual for calls, first attempts (the part that does not depend on replies), prompt and
completion tokens. The issue's targets: with a pilot, calls within 10% and tokens within 25%.

    python bench/plan_accuracy.py                      # every example, pilot 5, each example's own window
    python bench/plan_accuracy.py --limit 4 --pilot 2  # smaller, for 2 cores (ratios over 4 records)
    python bench/plan_accuracy.py --examples demo,vote --seed10   # wizard_seed.jsonl -> its 10-record version

Examples left out: magpie_vllm (needs a GPU and vLLM) and dialogue_binary (reads the output of dialogue plus
`joyforge dialogue-split`, not a file that ships).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.fanout import Assumptions
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.meter import CallMeter, MeteredGateway, meter_steps
from joydataforge.engine.plan import Plan, known_assumptions, make_plan, registry_for
from joydataforge.engine.registry import build_step
from joydataforge.models.cache import CallCache

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SKIPPED = {"magpie_vllm", "dialogue_binary"}


def examples() -> list[str]:
    names = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text("utf-8")
        if path.stem in SKIPPED or "\nsteps:" not in text:
            continue
        names.append(path.stem)
    return names


def workspace(seed10: bool) -> Path:
    """A copy of examples/ (pipelines find their models and inputs beside them) with a fresh call cache."""
    folder = Path(tempfile.mkdtemp(prefix="joyforge-plan-bench-")) / "examples"
    shutil.copytree(EXAMPLES, folder)
    if seed10:
        shutil.copy(EXAMPLES / "wizard_seed10.jsonl", folder / "wizard_seed.jsonl")
    return folder


def load(folder: Path, name: str, limit: int | None) -> Pipeline:
    overrides = {"input.limit": limit} if limit is not None else {}
    pipeline = Pipeline.from_yaml(folder / f"{name}.yaml", overrides=overrides)
    pipeline.output.dir = str(folder / "out" / name)
    pipeline.run.cache = str(folder / "cache" / f"{name}.sqlite")
    pipeline.run.progress = False
    return pipeline


async def real_run(pipeline: Pipeline) -> tuple[CallMeter, float]:
    """The run itself, every request counted (cache hits too: the pilot's records are answered from the cache)."""
    registry = registry_for(pipeline)
    steps = meter_steps([build_step(config) for config in pipeline.step_configs])
    run_pipeline = pipeline.model_copy(update={"steps": steps})
    cache = CallCache(pipeline.resolve(pipeline.run.cache))  # type: ignore[arg-type]
    meter = CallMeter()
    gateway = MeteredGateway(registry, cache, meter=meter)
    started = time.perf_counter()
    try:
        await LocalExecutor(run_pipeline, registry=registry, gateway=gateway, overwrite=True, progress=False).run()
    except Exception as exc:  # a stopped run still measured what it did
        print(f"  (the run ended early: {exc})", file=sys.stderr)
    finally:
        cache.close()
    return meter, time.perf_counter() - started


def actual(meter: CallMeter) -> dict[str, float]:
    tallies = list(meter.totals.values())
    return {
        "calls": sum(t.requests for t in tallies),
        "first_attempts": sum(t.requests - t.re_asks for t in tallies),
        "prompt_tokens": sum(t.prompt_tokens for t in tallies),
        "completion_tokens": sum(t.completion_tokens for t in tallies),
        "failed": sum(t.failed for t in tallies),
    }


def planned(plan: Plan) -> dict[str, object]:
    totals = plan.totals()
    numbers: dict[str, object] = {
        key: float(totals[key]) for key in ("calls", "first_attempts", "prompt_tokens", "completion_tokens")
    }
    numbers.update(calls_range=totals["calls_range"], tokens_range=totals["tokens_range"])
    return numbers


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "  -  " if a == 0 else " inf "
    return f"{a / b:5.2f}"


async def bench(name: str, folder: Path, pilot: int, limit: int | None) -> dict[str, object]:
    pipeline = load(folder, name, limit)
    registry = registry_for(pipeline)
    assume = Assumptions(known_assumptions())
    started = time.perf_counter()
    static = await make_plan(pipeline, registry, assume)
    static_seconds = time.perf_counter() - started
    piloted = await make_plan(load(folder, name, limit), registry, Assumptions(known_assumptions()), pilot=pilot)
    meter, seconds = await real_run(load(folder, name, limit))
    got = actual(meter)
    return {
        "example": name,
        "records": piloted.records,
        "pilot": piloted.pilot,
        "static": planned(static),
        "static_exact": static.totals()["exact"],
        "piloted": planned(piloted),
        "actual": got,
        "plan_seconds": round(static_seconds, 2),
        "pilot_seconds": round(piloted.pilot_seconds or 0.0, 1),
        "run_seconds": round(seconds, 1),
    }


def report(rows: list[dict[str, object]]) -> None:
    print(
        f"{'example':14} {'recs':>4} {'pilot':>5} | no pilot: {'first':>5} | with pilot: {'calls':>5} {'prompt':>6} "
        f"{'compl':>6} {'tokens':>6} | actual calls, tokens | secs"
    )
    for row in rows:
        s, p, a = row["static"], row["piloted"], row["actual"]  # type: ignore[assignment]
        tokens_p = p["prompt_tokens"] + p["completion_tokens"]  # type: ignore[index]
        tokens_a = a["prompt_tokens"] + a["completion_tokens"]  # type: ignore[index]
        exact = "=" if row["static_exact"] else "~"
        print(
            f"{row['example']:14} {row['records']:>4} {row['pilot']:>5} | {exact}        "
            f"{ratio(s['first_attempts'], a['first_attempts'])} |              "  # type: ignore[index]
            f"{ratio(p['calls'], a['calls'])} {ratio(p['prompt_tokens'], a['prompt_tokens'])}  "  # type: ignore[index]
            f"{ratio(p['completion_tokens'], a['completion_tokens'])}  {ratio(tokens_p, tokens_a)} | "  # type: ignore[index]
            f"{a['calls']:>4.0f} {tokens_a:>8,.0f} | {row['run_seconds']}"  # type: ignore[index]
        )
    within = [
        r
        for r in rows
        if abs(r["piloted"]["calls"] / max(1, r["actual"]["calls"]) - 1) <= 0.10  # type: ignore[index]
        and abs(
            (r["piloted"]["prompt_tokens"] + r["piloted"]["completion_tokens"])  # type: ignore[index]
            / max(1, r["actual"]["prompt_tokens"] + r["actual"]["completion_tokens"])  # type: ignore[index]
            - 1
        )
        <= 0.25
    ]
    print(f"with a pilot: {len(within)} of {len(rows)} examples within 10% of the calls and 25% of the tokens")
    covered = [
        r
        for r in rows
        if r["piloted"]["calls_range"][0] <= r["actual"]["calls"] <= r["piloted"]["calls_range"][1]  # type: ignore[index]
    ]
    print(f"the actual calls inside the range the pilot's plan stated: {len(covered)} of {len(rows)}")
    print("ratios are planned / actual; '=': the plan without a pilot says its first attempts are exact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot", type=int, default=5, help="records run by the pilot (default 5)")
    parser.add_argument("--limit", type=int, help="input records per example (default: each example's own window)")
    parser.add_argument("--examples", help="comma-separated example names (default: all on the embedded model)")
    parser.add_argument("--seed10", action="store_true", help="read wizard_seed10.jsonl where wizard_seed.jsonl is")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (outputs, caches)")
    args = parser.parse_args()
    names = args.examples.split(",") if args.examples else examples()
    folder = workspace(args.seed10)
    rows = []
    try:
        for name in names:
            started = time.perf_counter()
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            rows.append(asyncio.run(bench(name, folder, args.pilot, args.limit)))
            print(f"[{name}] done in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2), "utf-8")
    finally:
        if args.keep:
            print(f"work folder: {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder.parent, ignore_errors=True)
    report(rows)


if __name__ == "__main__":
    main()
