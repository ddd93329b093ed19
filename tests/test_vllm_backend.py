"""The vLLM offline backend against a test double of the ``vllm`` package (tests/fake_vllm).

What is checked here is ours: batching of concurrent requests into one ``LLM.generate``/``LLM.chat`` call
on the engine's own thread, parameter mapping, ``n`` samples, structured output, chat templates, error
isolation and messages, and the Magpie steps end to end. The real vLLM runs in tests/test_vllm_real.py
(`make test-vllm`: vLLM's CPU build).
"""

import asyncio
import importlib.util
import sys
import threading
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import ConfigError, ModelError
from joydataforge.methods.magpie.slots import write_slots
from joydataforge.models.backends import vllm_offline
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.support.waiting import eventually

FAKE = Path(__file__).parent / "fake_vllm"
FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    sys.modules.pop("vllm", None)
    sys.modules.pop("vllm.sampling_params", None)
    import vllm

    assert vllm.__file__.startswith(str(FAKE))
    vllm.CALLS.clear()
    vllm.LOADS.clear()
    monkeypatch.setattr(vllm_offline._Engine, "_engines", {})
    yield vllm
    sys.modules.pop("vllm", None)
    sys.modules.pop("vllm.sampling_params", None)


def registry(**extra) -> ModelRegistry:
    body = {"backend": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct", "engine_args": {"max_model_len": 4096}}
    return ModelRegistry.from_dict({"models": {"v": {**body, **extra}}}, "test models.yaml")


def test_config_defaults_and_errors():
    config = registry().get("v")
    assert config.max_concurrency == 256  # vLLM batches what is in flight
    assert registry(max_concurrency=8).get("v").max_concurrency == 8
    assert config.identity()["engine_args"] == {"max_model_len": 4096}
    with pytest.raises(ConfigError, match=r"test: models.o.engine_args: .*vllm backend, not openai"):
        ModelRegistry.from_dict(
            {"models": {"o": {"backend": "openai", "base_url": "http://x/v1", "engine_args": {"dtype": "half"}}}},
            "test",
        )
    with pytest.raises(ConfigError, match="model:, not engine_args.model"):
        registry(engine_args={"model": "x"})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
async def test_without_vllm_the_error_says_how_to_install():
    gateway = Gateway(registry())
    with pytest.raises(ConfigError, match=r"pip install 'joydataforge\[vllm\]'"):
        await gateway.model("v").complete("hello")


async def test_concurrent_requests_are_batched_off_the_event_loop(fake_vllm):
    gateway = Gateway(registry())
    client = gateway.model("v")
    replies = await asyncio.gather(*(client.complete(f"prompt {i}", max_tokens=8) for i in range(24)))
    assert all(r.text for r in replies)
    generate = [c for c in fake_vllm.CALLS if c["kind"] == "generate"]
    assert sum(c["size"] for c in generate) == 24
    assert max(c["size"] for c in generate) > 1  # handed to vLLM together, not one by one
    assert len(generate) < 24
    assert all(c["thread"] != threading.get_ident() and not c["use_tqdm"] for c in generate)
    assert fake_vllm.LOADS[0]["thread"] != threading.get_ident()  # loading never blocks the loop
    assert fake_vllm.LOADS[0]["kwargs"] == {"max_model_len": 4096}
    # each reply belongs to its own prompt, whatever the batch order
    for i, reply in enumerate(replies):
        assert reply.usage.prompt_tokens == 2 and reply.finish_reason in ("stop", "length")
        again = await client.complete(f"prompt {i}", max_tokens=8)
        assert again.text == reply.text
    await gateway.close()


async def test_parameters_are_mapped_and_unknown_ones_refused(fake_vllm):
    gateway = Gateway(registry(params={"temperature": 0.7}))
    client = gateway.model("v")
    await client.complete("x", top_p=0.9, max_tokens=5, repeat_penalty=1.1, stop=["\n"])
    params = fake_vllm.CALLS[-1]["params"][0]
    assert (params.temperature, params.top_p, params.max_tokens, params.repetition_penalty, params.stop) == (
        0.7,
        0.9,
        5,
        1.1,
        ["\n"],
    )
    assert isinstance(params.seed, int) and params.n == 1  # the gateway's per-call seed
    with pytest.raises(ModelError, match=r"does not know generation parameters \['mirostat'\]"):
        await client.complete("x", mirostat=2)


async def test_n_samples_in_one_request(fake_vllm):
    gateway = Gateway(registry())
    samples = await gateway.model("v").complete_n("Tell me something", 4, max_tokens=12)
    assert len(samples) == 4 and len({s.text for s in samples}) == 4
    call = fake_vllm.CALLS[-1]
    assert call["size"] == 1 and call["params"][0].n == 4
    assert samples[0].usage.prompt_tokens == 3 and all(s.usage.prompt_tokens == 0 for s in samples[1:])
    assert gateway.usage["v"].calls == 1


async def test_chat_and_structured_output(fake_vllm):
    gateway = Gateway(registry())
    client = gateway.model("v")
    reply = await client.chat([{"role": "user", "content": "hi"}], max_tokens=20)
    assert reply.text and fake_vllm.CALLS[-1]["kind"] == "chat" and fake_vllm.CALLS[-1]["chat_template"] is None
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["yes", "no"]}, "score": {"type": "integer", "minimum": 1}},
        "required": ["label", "score"],
    }
    value, _ = await client.chat_json([{"role": "user", "content": "judge"}], schema)
    assert value["label"] in ("yes", "no") and value["score"] >= 1
    assert fake_vllm.CALLS[-1]["params"][0].structured_outputs.json == schema


def test_structured_params_on_a_fresh_import(fake_vllm):
    """vLLM exports lazily: ``vllm.sampling_params`` is not an attribute before something imports it."""
    assert "vllm.sampling_params" not in sys.modules
    params = vllm_offline.sampling_params(fake_vllm, {"max_tokens": 4}, json_schema={"type": "object"})
    assert params.structured_outputs.json == {"type": "object"} and params.max_tokens == 4


async def test_embeddings_on_a_pooling_model_and_a_hint_otherwise(fake_vllm):
    gateway = Gateway(registry(engine_args={"runner": "pooling", "convert": "embed"}, pricing={"input_per_mtok": 1e6}))
    vectors = await gateway.model("v").embed(["one two three", "four five"])
    assert len(vectors) == 2 and len(vectors[0]) == 8 and vectors[0] != vectors[1]
    assert gateway.usage["v"].prompt_tokens == 5  # vLLM's own token count, not chars/4
    call = fake_vllm.CALLS[-1]
    assert call["kind"] == "embed" and call["thread"] != threading.get_ident() and not call["use_tqdm"]
    generative = Gateway(registry())
    with pytest.raises(ModelError, match=r"engine_args: \{runner: pooling, convert: embed\}"):
        await generative.model("v").embed(["x"])


async def test_reward_scores_are_raw_logits_of_the_templated_conversation(fake_vllm):
    gateway = Gateway(registry(engine_args={"runner": "pooling"}))
    conversations = [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"answer {i}"}] for i in range(3)
    ]
    scores = await gateway.model("v").reward(conversations)
    call = fake_vllm.CALLS[-1]
    assert call["kind"] == "classify" and call["size"] == 3 and call["params"][0].use_activation is False
    ids = call["prompts"][0]["prompt_token_ids"]
    assert ids[0] != 1  # the template's text, tokenized without a second BOS
    assert scores[0] == pytest.approx(sum(ids) / len(ids) / 1000) and len(set(scores)) == 3
    with_activation = await gateway.model("v").reward(conversations[:1], use_activation=True)
    assert 0 < with_activation[0] < 1
    with pytest.raises(ModelError, match="takes only use_activation"):
        await gateway.model("v").reward(conversations[:1], temperature=0.5)
    generative = Gateway(registry())
    with pytest.raises(ModelError, match=r"sequence-classification reward model loaded with"):
        await generative.model("v").reward(conversations[:1])


async def test_a_failing_prompt_fails_alone(fake_vllm):
    gateway = Gateway(registry())
    client = gateway.model("v")
    results = await asyncio.gather(
        *(client.complete(p) for p in ["a", "b FAIL_IN_VLLM", "c", "d"]), return_exceptions=True
    )
    assert [isinstance(r, ModelError) for r in results] == [False, True, False, False]
    assert "model 'v': vLLM: ValueError: The decoder prompt is longer" in str(results[1])


async def test_a_model_that_cannot_load_names_the_model(fake_vllm):
    gateway = Gateway(registry(model="missing/model"))
    for _ in range(2):  # loaded once; the error stays for later calls instead of retrying a GPU load
        with pytest.raises(ConfigError, match="model 'v': vLLM could not load 'missing/model': OSError"):
            await gateway.model("v").complete("x")
    assert len(fake_vllm.LOADS) == 1


async def test_chat_template_from_tokenizer_or_file(fake_vllm):
    gateway = Gateway(registry())
    source = await gateway.model("v").chat_template()
    assert source.template == fake_vllm.CHATML and source.eos_token == "<|im_end|>"
    assert source.origin.startswith("vLLM tokenizer chat_template")

    template_file = FIXTURES / "smollm2.jinja"
    gateway = Gateway(registry(chat_template=str(template_file)))
    client = gateway.model("v")
    assert (await client.chat_template()).template == template_file.read_text("utf-8")
    await client.chat([{"role": "user", "content": "hi"}])
    assert fake_vllm.CALLS[-1]["chat_template"] == template_file.read_text("utf-8")


def test_magpie_pipeline_on_vllm(fake_vllm, tmp_path):
    write_slots(tmp_path / "slots.jsonl", 6)
    models = registry(model="acme/custom-sft")  # no family to guess from the name: the tokenizer's template is used
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "slots.jsonl")},
            "steps": [
                {"magpie": {"model": "v", "params": {"max_tokens": 32}}},
                {"magpie_response": {"model": "v", "params": {"max_tokens": 32}}},
            ],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, "concurrency": 6},
        }
    )
    summary = LocalExecutor(pipeline, registry=models, gateway=Gateway(models)).run_sync()
    assert summary.records_out == 6 and summary.failed == 0
    import json

    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    assert all(r["input"].startswith("How can I") and r["input"].endswith("?") for r in rows)
    assert all(r["magpie"]["template_origin"].startswith("vLLM tokenizer") for r in rows)
    assert rows[0]["magpie"]["pre_query"] == "<|im_start|>user\n"
    assert all(r["messages"][-1]["role"] == "assistant" and r["target"] for r in rows)
    kinds = [c["kind"] for c in fake_vllm.CALLS]
    assert kinds.count("generate") < 6 or kinds.count("chat") < 6  # records in flight shared vLLM calls


async def test_a_cancelled_caller_does_not_stop_the_engine(fake_vllm):
    gateway = Gateway(registry())
    client = gateway.model("v")
    engine, gate = client.backend.engine, threading.Event()
    busy = engine.submit(vllm_offline._Request("call", lambda llm: gate.wait(30)))  # the engine is busy...
    await eventually(busy.running, "the engine busy")
    task = asyncio.create_task(client.complete("to be cancelled"))
    await eventually(
        lambda: engine._queue.qsize() == 1, "the request queued"
    )  # ...while the request waits in its queue
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    assert (await client.complete("still served")).text
    prompts = [p for call in fake_vllm.CALLS for p in call["prompts"]]
    assert prompts == ["still served"]  # the cancelled one never reached vLLM


def test_example_magpie_vllm_runs(fake_vllm, tmp_path):
    """examples/magpie_vllm.yaml as a user runs it (`joyforge run`), with the vLLM stand-in for the GPU."""
    import json
    import shutil

    from click.testing import CliRunner

    from joydataforge.cli import cli

    examples = Path(__file__).parent.parent / "examples"
    for name in ("magpie_vllm.yaml", "vllm_models.yaml", "magpie_slots.jsonl"):  # its call cache goes beside it
        shutil.copy(examples / name, tmp_path / name)
    out = tmp_path / "magpie-vllm"
    result = CliRunner().invoke(
        cli,
        ["run", str(tmp_path / "magpie_vllm.yaml"), "-o", str(out), "--limit", "3", "--no-progress"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text("utf-8").splitlines()]
    assert rows and len(rows) <= 12  # 3 slots x 4 samples, minus what the quality judge left out
    assert all(r["language"] == "zh" and r["input"].startswith("请问") for r in rows)
    assert all(r["magpie"]["n"] == 4 and r["magpie"]["samples_per_call"] == 4 for r in rows)
    assert all(r["input_quality"] in ("average", "good", "excellent") and r["target"] for r in rows)
    first_round = [c for c in fake_vllm.CALLS if c["kind"] == "generate" and c["params"][0].n == 4]
    assert sum(c["size"] for c in first_round) == 3  # one 4-sample request per slot


def test_bench_vllm_offline_runs_end_to_end(fake_vllm, tmp_path, capsys):
    """bench/vllm_offline.py is meant for a GPU machine; here the stand-in drives its code paths (the numbers
    mean nothing), so the script is known to work before a GPU is at hand."""
    import importlib.util
    import json

    path = Path(__file__).parent.parent / "bench" / "vllm_offline.py"
    spec = importlib.util.spec_from_file_location("bench_vllm_offline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(
        [
            "--model",
            "acme/chat",
            "--n",
            "24",
            "--samples-per-call",
            "4",
            "--rounds",
            "2",
            "--json",
            str(tmp_path / "bench.json"),
        ]
    )
    assert result["baseline"]["draws"] == result["engine"]["draws"] == result["grouped"]["draws"] == 24
    assert result["engine"]["over_bare_tokens_per_s"] > 0 and result["engine_batches"]["max"] >= 1
    assert json.loads((tmp_path / "bench.json").read_text("utf-8"))["model"] == "acme/chat"
    assert "engine/bare" in capsys.readouterr().out


def test_joyforge_magpie_command_on_vllm(fake_vllm, tmp_path):
    """`joyforge magpie` with a vllm model from a models file: both stages, grouped draws, dedup between."""
    import json
    import shutil

    from click.testing import CliRunner

    from joydataforge.cli.magpie import magpie_command

    shutil.copy(Path(__file__).parent.parent / "examples" / "vllm_models.yaml", tmp_path / "models.yaml")
    out = tmp_path / "zh"
    result = CliRunner().invoke(
        magpie_command,
        [
            "--models",
            str(tmp_path / "models.yaml"),
            "--model",
            "qwen-vllm",
            "--response-model",
            "qwen-vllm-greedy",
            "--language",
            "zh",
            "--samples",
            "4",
            "--samples-per-call",
            "4",
            "-n",
            "5",
            "-o",
            str(out),
            "--repetition-penalty",
            "1.05",
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    written = (out / "magpie-instructions.yaml").read_text("utf-8")
    assert "concurrency: 256" in written  # a vllm model gets the engine's batch width by default
    rows = [json.loads(line) for line in (out / "conversations" / "data.jsonl").read_text("utf-8").splitlines()]
    assert rows and all(r["language"] == "zh" and r["target"] for r in rows)
    firsts = [c for c in fake_vllm.CALLS if c["kind"] == "generate" and c["params"][0].n == 4]
    assert firsts and all(p.repetition_penalty == 1.05 for c in firsts for p in c["params"])


def test_records_in_flight_follow_the_engine_unless_set(fake_vllm, tmp_path):
    write_slots(tmp_path / "slots.jsonl", 40)
    models = registry()

    def pipeline(run: dict) -> Pipeline:
        return Pipeline.from_dict(
            {
                "input": {"path": str(tmp_path / "slots.jsonl")},
                "steps": [{"magpie": {"model": "v", "params": {"max_tokens": 16}}}],
                "output": {"dir": str(tmp_path / f"out{len(run)}")},
                "run": {"cache": None, "progress": False, **run},
            }
        )

    wide = pipeline({})
    LocalExecutor(wide, registry=models, gateway=Gateway(models)).run_sync()
    assert wide.run.concurrency == 256  # the vllm model's max_concurrency, not the default 32
    assert max(c["size"] for c in fake_vllm.CALLS) > 8  # records in flight reached vLLM together
    fixed = pipeline({"concurrency": 4, "seed": 0})
    LocalExecutor(fixed, registry=models, gateway=Gateway(models)).run_sync()
    assert fixed.run.concurrency == 4
