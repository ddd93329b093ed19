"""How close ``joyforge plan`` comes to the run it plans, on every example pipeline with the embedded model.

For each example: the plan without a pilot, the plan with ``--pilot P``, then the real run over the same window
with the same call cache (so the pilot's records come from the cache, as they would for a user), every request
of the run counted by step and model (cache hits included, with their stored token counts). Printed per
example: planned and actual calls and tokens (prompt + completion) and their ratios (planned / actual), whether
the actual number lies in the range the plan stated, and how many records the pilot left to extrapolate. The
issue's targets: with a pilot, calls within 10% and tokens within 25%. The last line gives the worst ratios.

    python bench/plan_accuracy.py                         # every example, pilot 5, up to 20 records each
    python bench/plan_accuracy.py --records 8 --pilot 3   # smaller, for 2 cores
    python bench/plan_accuracy.py --examples vote,critique --json rows.json

Inputs: each example's own file, its ``limit`` raised to ``--records`` where the file has more records; the
examples that read wizard_seed.jsonl (5 records) read wizard_seed10.jsonl (the same 5, then 5 more), so that a
pilot of 5 leaves records to extrapolate. ``dialogue_binary`` reads the output of ``dialogue`` (run here just
before it) split by ``joyforge dialogue-split`` as its comment says. Left out, with the reason printed: pipelines
whose models run on vLLM (they need a GPU and the vllm package, not the embedded model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.fanout import Assumptions
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.meter import CallMeter, MeteredGateway, meter_steps
from joydataforge.engine.plan import Plan, known_assumptions, make_plan, registry_for
from joydataforge.engine.registry import build_step
from joydataforge.models.cache import CallCache

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CALLS_TARGET, TOKENS_TARGET = 0.10, 0.25


def examples() -> list[str]:
    """Every example pipeline (a YAML file with steps), in name order (dialogue before dialogue_binary)."""
    names = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text("utf-8"))
        if isinstance(data, dict) and data.get("steps"):
            names.append(path.stem)
    return names


def workspace() -> Path:
    """A copy of examples/ (pipelines find their models and inputs beside them), wizard_seed.jsonl widened."""
    folder = Path(tempfile.mkdtemp(prefix="joyforge-plan-bench-")) / "examples"
    shutil.copytree(EXAMPLES, folder)
    shutil.copy(EXAMPLES / "wizard_seed10.jsonl", folder / "wizard_seed.jsonl")
    return folder


def load(folder: Path, name: str, records: int) -> Pipeline:
    pipeline = Pipeline.from_yaml(folder / f"{name}.yaml", overrides={"input.limit": records})
    pipeline.output.dir = str(folder.parent / "out" / name)
    pipeline.run.cache = str(folder.parent / "cache" / f"{name}.sqlite")
    pipeline.run.progress = False
    return pipeline


def why_not(pipeline: Pipeline) -> str | None:
    """Why an example cannot run here (None: it can)."""
    registry = registry_for(pipeline)
    names = {name for config in pipeline.step_configs for name in config.model_names()}
    vllm = sorted(name for name in names if registry.get(name).backend == "vllm")
    if vllm:
        return f"its models {vllm} run on vLLM (a GPU and the vllm package), not on the embedded model"
    path = pipeline.resolve(pipeline.input.path)
    if path is None or not path.exists():
        return f"its input {pipeline.input.path} does not exist (made by another example that did not run)"
    return None


def split_dialogues(folder: Path) -> None:
    """``joyforge dialogue-split`` over dialogue's output, as examples/dialogue_binary.yaml says."""
    from joydataforge.cli.dialogue import dialogue_split_command

    out = folder.parent / "out" / "dialogue"
    if (out / "data.jsonl").is_file():
        args = [str(out / "data.jsonl"), "-o", str(out / "split"), "--test-size", "2", "--seed", "0", "--no-xlsx"]
        with contextlib.redirect_stdout(sys.stderr):  # its summary is not part of the table
            dialogue_split_command.main(args, standalone_mode=False)


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
        "tokens": sum(t.prompt_tokens + t.completion_tokens for t in tallies),
        "failed": sum(t.failed for t in tallies),
    }


def planned(plan: Plan) -> dict[str, Any]:
    totals = plan.totals()
    return {
        "calls": float(totals["calls"]),
        "first_attempts": float(totals["first_attempts"]),
        "tokens": float(totals["prompt_tokens"] + totals["completion_tokens"]),
        "calls_range": totals["calls_range"],
        "tokens_range": totals["tokens_range"],
        "exact": totals["exact"],
    }


async def bench(name: str, folder: Path, pilot: int, records: int) -> dict[str, Any]:
    pipeline = load(folder, name, records)
    static = await make_plan(pipeline, registry_for(pipeline))
    started = time.perf_counter()
    pipeline = load(folder, name, records)
    piloted = await make_plan(pipeline, registry_for(pipeline), Assumptions(known_assumptions()), pilot=pilot)
    plan_seconds = time.perf_counter() - started
    meter, seconds = await real_run(load(folder, name, records))
    return {
        "example": name,
        "records": piloted.records,
        "pilot": piloted.pilot,
        "static": planned(static),
        "piloted": planned(piloted),
        "actual": actual(meter),
        "pilot_seconds": round(plan_seconds, 1),
        "run_seconds": round(seconds, 1),
    }


def ratio(a: float, b: float) -> float | None:
    if b == 0:
        return 1.0 if a == 0 else None
    return a / b


def shown(value: float | None) -> str:
    return "  inf" if value is None else f"{value:5.2f}"


def inside(value: float, span: list[float]) -> str:
    return "y" if span[0] - 0.5 <= value <= span[1] + 0.5 else "n"


def report(rows: list[dict[str, Any]], skipped: dict[str, str]) -> None:
    print(
        f"{'example':16} {'recs':>4} {'pilot':>5} {'rest':>4} | no pilot: {'first':>5} | with pilot: "
        f"{'calls':>6} {'real':>6} {'ratio':>5} {'in':>2} | {'tokens':>8} {'real':>8} {'ratio':>5} {'in':>2} | "
        f"{'pilot s':>7} {'run s':>6}"
    )
    for row in rows:
        s, p, a = row["static"], row["piloted"], row["actual"]
        exact = "=" if s["exact"] else "~"
        rest = row["records"] - (row["pilot"] or 0)
        print(
            f"{row['example']:16} {row['records']:>4} {row['pilot'] or 0:>5} {rest:>4} | {exact}        "
            f"{shown(ratio(s['first_attempts'], a['first_attempts']))} |             "
            f"{p['calls']:>6.1f} {a['calls']:>6.0f} {shown(ratio(p['calls'], a['calls']))} "
            f"{inside(a['calls'], p['calls_range']):>2} | "
            f"{p['tokens']:>8,.0f} {a['tokens']:>8,.0f} {shown(ratio(p['tokens'], a['tokens']))} "
            f"{inside(a['tokens'], p['tokens_range']):>2} | "
            f"{row['pilot_seconds']:>7.0f} {row['run_seconds']:>6.0f}"
        )
    for name, reason in skipped.items():
        print(f"{name:16} left out: {reason}")
    print(
        "ratios: planned / real; first: first attempts planned without a pilot ('=': the plan says they are "
        "exact); in: the real number inside the range the piloted plan stated; rest: records extrapolated"
    )
    if not rows:
        return
    within = [
        r
        for r in rows
        if abs((ratio(r["piloted"]["calls"], r["actual"]["calls"]) or 99) - 1) <= CALLS_TARGET
        and abs((ratio(r["piloted"]["tokens"], r["actual"]["tokens"]) or 99) - 1) <= TOKENS_TARGET
    ]
    print(f"with a pilot: {len(within)} of {len(rows)} examples within 10% of the calls and 25% of the tokens")

    def worst(key: str) -> str:
        def off(row: dict[str, Any]) -> float:
            value = ratio(row["piloted"][key], row["actual"][key])
            return float("inf") if value is None else abs(value - 1)

        row = max(rows, key=off)
        return f"{shown(ratio(row['piloted'][key], row['actual'][key])).strip()} ({row['example']})"

    print(f"worst ratios with a pilot: calls {worst('calls')}, tokens {worst('tokens')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot", type=int, default=5, help="records run by the pilot (default 5)")
    parser.add_argument(
        "--records", type=int, default=20, help="input records per example, where its input has them (default 20)"
    )
    parser.add_argument("--examples", help="comma-separated example names (default: every one)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (outputs, caches)")
    args = parser.parse_args()
    names = args.examples.split(",") if args.examples else examples()
    folder = workspace()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    try:
        for name in names:
            if name == "dialogue_binary":
                split_dialogues(folder)
            reason = why_not(load(folder, name, args.records))
            if reason is not None:
                skipped[name] = reason
                print(f"[{name}] left out: {reason}", file=sys.stderr, flush=True)
                continue
            started = time.perf_counter()
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            rows.append(asyncio.run(bench(name, folder, args.pilot, args.records)))
            print(f"[{name}] done in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=2), "utf-8")
    finally:
        if args.keep:
            print(f"work folder: {folder.parent}", file=sys.stderr)
        else:
            shutil.rmtree(folder.parent, ignore_errors=True)
    report(rows, skipped)


if __name__ == "__main__":
    main()
