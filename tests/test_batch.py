"""Provider batch APIs (issue 15): a batched run sends each stage's uncached calls as one batch, stops, and goes
on from the collected results, with no live call; failed, expired and cancelled requests follow batch_failed.

The provider is the mock OpenAI server's ``/v1/files`` and ``/v1/batches`` (tests/mock_openai/batches.py):
it answers a batch's requests with its own chat and completions logic (directives included), after
``batch_delay`` seconds, with its output lines shuffled. Its ``/_stats`` count live model requests apart from
batched ones, which is how "no live call" is checked. Crashes (kill -9) are in tests/test_batch_crash.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from joydataforge.cli import cli
from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.batches import BatchPending
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import BudgetExceeded, ConfigError
from joydataforge.models import batch_api
from joydataforge.models.batch import read_results
from joydataforge.models.batch_api import BatchAPI
from joydataforge.models.config import ModelRegistry

N = 6
GENERATE_LABEL = (
    "  - generate: {model: m, prompt: en/answer}\n"
    "  - label: {model: m, prompt: en/label, options: {labels: [good, bad]}}\n"
)
PRICE = "    pricing: {input_per_mtok: 2, output_per_mtok: 8, batch_input_per_mtok: 1, batch_output_per_mtok: 4}\n"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def project(
    work: Path,
    base_url: str,
    *,
    steps: str = GENERATE_LABEL,
    inputs: list[str] | None = None,
    model: str = "",
    out: str = "out",
    cache: str = "cache.sqlite",
    price: str = PRICE,
    run_settings: str = "",
) -> Path:
    """A pipeline over ``N`` questions (or ``inputs``) calling model ``m`` (the mock), with its own cache."""
    work.mkdir(parents=True, exist_ok=True)
    texts = inputs if inputs is not None else [f"question number {i} about topic {i % 3}" for i in range(N)]
    (work / "in.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "input": t}) + "\n" for i, t in enumerate(texts)))
    (work / "models.yaml").write_text(
        f"models:\n  m:\n    backend: openai\n    model: mock-model\n    base_url: {base_url}\n"
        f"    max_retries: 0\n{price}{model}"
    )
    path = work / f"{out}.yaml"
    path.write_text(
        f"input: {{path: in.jsonl}}\nmodels: models.yaml\nsteps:\n{steps}"
        f"output: {{dir: {out}}}\nrun: {{cache: {cache}, progress: false, concurrency: 4{run_settings}}}\n"
    )
    return path


def run(path: Path, *, batch: bool = True, retry_failed: bool = False) -> tuple[str, Any]:
    """One ``joyforge run [--batch]``: ("pending", the stop line) or ("done", the summary)."""
    overrides = {"run.retry_failed": True} if retry_failed else None
    pipeline = Pipeline.from_yaml(str(path), overrides=overrides)
    try:
        return "done", LocalExecutor(pipeline, progress=False, batch=batch).run_sync()
    except BatchPending as stop:
        return "pending", stop.reason


def run_to_end(path: Path, *, most: int = 10, wait: float = 0.0) -> tuple[list[str], Any]:
    """Re-run until the run is done: the stop lines on the way, and the last summary."""
    said = []
    for _ in range(most):
        kind, value = run(path)
        if kind == "done":
            return said, value
        said.append(value)
        time.sleep(wait)
    raise AssertionError(f"not done after {most} runs: {said}")


def content(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their provenance (which says cached or not)."""
    return [{k: v for k, v in r.items() if k != "_meta"} for r in records]


def live_reference(tmp_path: Path, base_url: str, **options: Any) -> list[dict[str, Any]]:
    path = project(tmp_path / "live", base_url, **options)
    kind, summary = run(path, batch=False)
    assert kind == "done"
    return lines(path.parent / "out" / "data.jsonl")


def book(path: Path) -> dict[str, Any]:
    return json.loads((path.parent / "out" / "batches.json").read_text())


def test_a_two_stage_pipeline_completes_through_batches_with_no_live_call(mock_server, tmp_path):
    path = project(tmp_path / "batched", mock_server.url)
    said, summary = run_to_end(path)
    assert said == [
        f"batch batch_mock2 submitted ({N} requests); re-run the same command (or `joyforge batches status`) to collect",
        f"batch batch_mock5 submitted ({N} requests); re-run the same command (or `joyforge batches status`) to collect",
    ]
    stats = mock_server.stats()
    assert stats["by_endpoint"] == {} and stats["total"] == 0  # not one live call
    assert stats["batch_requests"] == 2 * N
    assert stats["batch_api"]["POST /v1/batches"] == 2  # one batch per stage
    data = lines(path.parent / "out" / "data.jsonl")
    assert len(data) == N and summary.inputs_done == N and summary.exit_code() == 0
    assert all(call["cached"] for record in data for call in record["_meta"]["calls"])
    # exactly what a live run makes (the mock is deterministic)
    reference = live_reference(tmp_path, mock_server.url)
    assert content(data) == content(reference)
    # the last run collected the second stage: its calls at the batch price (1 and 4 per million, not 2 and 8)
    usage = summary.models["m"]
    assert usage["calls"] == N
    assert usage["cost"] == pytest.approx((usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 4) / 1e6)
    assert [b["state"] for b in book(path)["batches"]] == ["collected", "collected"]


def test_each_batch_line_is_the_request_a_live_call_sends(mock_server, tmp_path):
    path = project(tmp_path / "batched", mock_server.url, steps="  - generate: {model: m, prompt: en/answer}\n")
    assert run(path)[0] == "pending"
    batched = lines(path.parent / "out" / "batches" / "b0001.jsonl")
    assert {line["url"] for line in batched} == {"/v1/chat/completions"}
    assert len({line["custom_id"] for line in batched}) == N
    mock_server.reset()
    live_reference(tmp_path, mock_server.url, steps="  - generate: {model: m, prompt: en/answer}\n")
    sent = [entry["body"] for entry in mock_server.stats()["last_requests"]]
    key = lambda body: json.dumps(body, sort_keys=True)  # noqa: E731
    assert sorted(map(key, sent)) == sorted(key(line["body"]) for line in batched)


def test_a_running_batch_is_never_sent_again_and_shuffled_results_land_on_their_calls(mock_server, tmp_path):
    mock_server.configure(batch_delay=3600)  # in progress until the test lets it complete
    steps = "  - generate: {model: m, prompt: en/answer}\n"
    path = project(tmp_path / "b", mock_server.url, steps=steps)
    assert run(path)[0] == "pending"
    kind, line = run(path)  # at once: still running
    assert kind == "pending"
    assert line.startswith(f"batch batch_mock2 in_progress (0/{N} requests done); re-run the same command later")
    assert mock_server.stats()["batch_api"]["POST /v1/batches"] == 1
    mock_server.configure(batch_delay=0)  # the provider finishes the batch
    kind, summary = run(path)
    assert kind == "done" and summary.inputs_done == N
    for record in lines(path.parent / "out" / "data.jsonl"):  # the mock echoes each record's own question
        assert record["input"] in record["target"]
    assert mock_server.stats()["batch_api"]["POST /v1/batches"] == 1


def test_failed_requests_go_into_the_next_batch(mock_server, tmp_path):
    inputs = [f"question {i}" + (f" [[mock:status=500,times=1,id=retry{i}]]" if i % 2 else "") for i in range(N)]
    path = project(
        tmp_path / "b", mock_server.url, steps="  - generate: {model: m, prompt: en/answer}\n", inputs=inputs
    )
    said, summary = run_to_end(path)
    assert said[1] == (
        "batch batch_mock6 submitted (3 requests); re-run the same command (or `joyforge batches status`) to collect"
    )
    record = book(path)
    assert record["batches"][0]["answered"] == 3 and record["batches"][0]["failed"] == 3
    assert record["failed"] == {}  # answered by the second batch
    assert summary.totals["ok"] == N and mock_server.stats()["total"] == 0


@pytest.mark.parametrize("policy", ["live", "fail"])
def test_batch_failed_live_or_fail(mock_server, tmp_path, policy):
    inputs = [f"question {i}" + (" [[mock:status=400,id=bad]]" if i == 0 else "") for i in range(N)]
    steps = "  - generate: {model: m, prompt: en/answer}\n"
    path = project(tmp_path / "b", mock_server.url, steps=steps, inputs=inputs, model=f"    batch_failed: {policy}\n")
    said, summary = run_to_end(path)
    assert len(said) == 1  # one batch; the failed request is not batched again
    if policy == "live":  # sent live, where the 400 fails it as any live call would
        assert mock_server.stats()["by_endpoint"] == {"/v1/chat/completions": 1}
    else:
        assert mock_server.stats()["total"] == 0
    failures = lines(path.parent / "out" / "failures.jsonl")
    assert [f["id"] for f in failures] == ["r0"] and summary.totals["ok"] == N - 1
    if policy == "fail":
        assert "batched request failed (HTTP 400: mock directive; 1 try, batch_failed: fail)" in failures[0]["error"]


def test_an_expired_batch_sends_what_it_did_not_answer_again(mock_server, tmp_path):
    mock_server.configure(batch_expire_after=2)
    path = project(tmp_path / "b", mock_server.url, steps="  - generate: {model: m, prompt: en/answer}\n")
    assert run(path)[0] == "pending"
    kind, line = run(path)  # collects the expired batch, sends what it did not answer
    mock_server.configure(batch_expire_after=-1)
    first = book(path)["batches"][0]
    assert first["status"] == "expired" and first["answered"] == 2 and first["failed"] == N - 2
    assert kind == "pending" and line.startswith(f"batch batch_mock6 submitted ({N - 2} requests)")
    said, summary = run_to_end(path)
    assert said == [] and summary.totals["ok"] == N and mock_server.stats()["total"] == 0


def test_a_request_that_keeps_failing_fails_after_three_batches(mock_server, tmp_path):
    inputs = ["always broken [[mock:status=500,id=forever]]", "fine"]
    path = project(
        tmp_path / "b", mock_server.url, steps="  - generate: {model: m, prompt: en/answer}\n", inputs=inputs
    )
    said, summary = run_to_end(path)
    assert len(said) == 3  # three tries, then the call fails and the record with it
    failures = lines(path.parent / "out" / "failures.jsonl")
    assert [f["id"] for f in failures] == ["r0"] and "3 tries" in failures[0]["error"]
    assert summary.totals["ok"] == 1


@pytest.mark.parametrize("approve, stages", [("", 2), ("      approve_score: 10\n", 3)])
def test_a_multi_stage_method_takes_one_batch_per_stage(mock_server, tmp_path, approve, stages):
    """Critique and revise: the draft, its critique, a revision... each call needs the one before it, so each
    is a stage: one batch each, one request per record in it. The mock's critic approves at once (2 stages);
    asked for a score of 10 it does not, and the revision (the mock's echo of the prompt) fails the step's
    text check, in the batched run exactly as in the live one."""
    steps = (
        "  - critique_revise:\n      model: m\n      critic: m\n      rounds: 2\n      draft_prompt: en/answer\n"
        f"      critique_prompt: en/critique\n      revise_prompt: en/revise\n      on_not_approved: keep\n{approve}"
    )
    path = project(tmp_path / "b", mock_server.url, steps=steps)
    said, summary = run_to_end(path)
    assert len(said) == stages and mock_server.stats()["total"] == 0
    assert [b["requests"] for b in book(path)["batches"]] == [N] * stages
    reference = live_reference(tmp_path, mock_server.url, steps=steps)
    assert content(lines(path.parent / "out" / "data.jsonl")) == content(reference)
    failures = lines(tmp_path / "live" / "out" / "failures.jsonl")
    assert [f["error"] for f in lines(path.parent / "out" / "failures.jsonl")] == [f["error"] for f in failures]
    assert len(reference if stages == 2 else failures) == N


def test_only_models_with_batch_true_are_batched_without_the_flag(mock_server, tmp_path):
    steps = "  - generate: {model: m, prompt: en/answer}\n  - generate: {model: live, prompt: en/answer, output_field: again}\n"
    path = project(tmp_path / "b", mock_server.url, steps=steps, model="    batch: true\n")
    with (path.parent / "models.yaml").open("a") as models:
        models.write(f"  live:\n    backend: openai\n    model: mock-live\n    base_url: {mock_server.url}\n")
    assert run(path, batch=False)[0] == "pending"
    kind, summary = run(path, batch=False)
    assert kind == "done" and summary.inputs_done == N
    stats = mock_server.stats()
    assert stats["batch_requests"] == N and stats["by_endpoint"] == {"/v1/chat/completions": N}


def test_batch_needs_the_cache_and_an_openai_model(mock_server, tmp_path):
    path = project(tmp_path / "b", mock_server.url, cache="null")
    with pytest.raises(ConfigError, match=r"batched calls need the call cache \(run.cache\)"):
        run(path)
    with pytest.raises(ConfigError, match="the llamacpp backend has no batch API"):
        ModelRegistry.from_dict({"models": {"x": {"backend": "llamacpp", "batch": True}}}, "models.yaml")


def test_a_batch_that_could_pass_the_budget_is_not_sent(mock_server, tmp_path):
    """Each request may cost 4 at the batch price (replies of at most 4 tokens at 1 a token, prompts free), so a
    stage of 6 costs up to 24: a budget of 30 lets the first batch go, and stops the second before it is sent,
    counting what the first really cost (the mock's replies are cut at 4 words: 24)."""
    price = "    pricing: {input_per_mtok: 0, output_per_mtok: 2000000, batch_input_per_mtok: 0,"
    price += " batch_output_per_mtok: 1000000}\n    params: {max_tokens: 4}\n"
    path = project(tmp_path / "b", mock_server.url, price=price, run_settings=", budget: {cost: 30}")
    assert run(path)[0] == "pending"
    with pytest.raises(BudgetExceeded) as stopped:
        run(path)
    assert str(stopped.value) == (
        "budget reached: spent 24 of run.budget.cost 30, every run of this output folder counted; a batch of 6 "
        "requests to 'm' may cost up to 24 at the batch price, not sent"
    )
    assert mock_server.stats()["batch_api"]["POST /v1/batches"] == 1
    assert json.loads((path.parent / "out" / "spend.json").read_text())["cost"] == 24
    path.write_text(path.read_text().replace("budget: {cost: 30}", "budget: {cost: 60}"))
    said, summary = run_to_end(path)
    assert len(said) == 1 and summary.totals["ok"] == N and mock_server.stats()["total"] == 0


def test_batches_status_and_cancel(mock_server, tmp_path):
    mock_server.configure(batch_delay=3600)
    path = project(tmp_path / "b", mock_server.url, steps="  - generate: {model: m, prompt: en/answer}\n")
    assert run(path)[0] == "pending"
    runner = CliRunner()
    shown = runner.invoke(cli, ["batches", "status", str(path), "--json"])
    assert shown.exit_code == 0, shown.output
    assert [(b["batch_id"], b["status"]) for b in json.loads(shown.stdout)] == [("batch_mock2", "in_progress")]
    cancelled = runner.invoke(cli, ["batches", "cancel", str(path)])
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelling" in cancelled.stdout
    # The next run collects the cancelled batch (nothing answered) and sends its requests again.
    mock_server.configure(batch_delay=0)
    kind, line = run(path)
    assert kind == "pending" and line.startswith(f"batch batch_mock4 submitted ({N} requests)")
    assert book(path)["batches"][0]["status"] == "cancelled"
    kind, summary = run(path)
    assert kind == "done" and summary.inputs_done == N and mock_server.stats()["total"] == 0
    shown = runner.invoke(cli, ["batches", "status", str(path)])
    assert "every batch is collected" in shown.output


def test_the_cli_says_one_line_and_exits_5(mock_server, tmp_path):
    path = project(tmp_path / "b", mock_server.url, steps="  - generate: {model: m, prompt: en/answer}\n")
    result = CliRunner().invoke(cli, ["run", str(path), "--batch", "--no-progress"])
    assert result.exit_code == 5
    assert result.stderr.strip().splitlines()[-1] == (
        f"batch batch_mock2 submitted ({N} requests); re-run the same command (or `joyforge batches status`) to collect"
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--batch", "--no-progress"])
    assert result.exit_code == 0, result.output


def test_poll_waits_for_the_batches_and_finishes(mock_server, tmp_path):
    mock_server.configure(batch_delay=1.0)
    path = project(tmp_path / "b", mock_server.url)
    result = CliRunner().invoke(cli, ["run", str(path), "--batch", "--poll", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "batch batch_mock2 submitted (6 requests); looking again in 1s" in result.stderr
    assert len(lines(path.parent / "out" / "data.jsonl")) == N and mock_server.stats()["total"] == 0


# ------------------------------------------------------------------------ the mock provider and the client


def test_the_client_finds_a_batch_by_its_metadata_page_by_page(mock_server, tmp_path, monkeypatch):
    monkeypatch.setattr(batch_api, "LIST_PAGE", 2)
    config = ModelRegistry.from_dict(
        {"models": {"m": {"backend": "openai", "model": "mock-model", "base_url": mock_server.url}}}, "t"
    ).get("m")
    source = tmp_path / "in.jsonl"
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
    source.write_text(json.dumps({"custom_id": "k", "method": "POST", "url": "/v1/chat/completions", "body": body}))

    async def scenario() -> tuple[Any, ...]:
        api = BatchAPI(config)
        try:
            file_id = await api.upload(source, "in.jsonl")
            made = [await api.create(file_id, "/v1/chat/completions", {"run": "r", "n": str(i)}) for i in range(5)]
            oldest = await api.find({"run": "r", "n": "0"}, time.time())
            missing = await api.find({"run": "other"}, time.time())
            done = await api.retrieve(made[0]["id"])
            output = await api.content(done["output_file_id"])
            return made, oldest, missing, done, output
        finally:
            await api.close()

    made, oldest, missing, done, output = asyncio.run(scenario())
    assert oldest["id"] == made[0]["id"] and missing is None
    assert mock_server.stats()["batch_api"]["GET /v1/batches"] == 6  # 5 batches, 2 a page, twice
    assert done["status"] == "completed" and done["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    assert read_results(output)["k"].body["choices"][0]["message"]["content"] == "echo: hi"


def test_the_mock_refuses_a_batch_with_a_bad_line(mock_server, tmp_path):
    config = ModelRegistry.from_dict(
        {"models": {"m": {"backend": "openai", "model": "mock-model", "base_url": mock_server.url}}}, "t"
    ).get("m")
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n')

    async def scenario() -> dict[str, Any]:
        api = BatchAPI(config)
        try:
            made = await api.create(await api.upload(source, "in.jsonl"), "/v1/chat/completions", {})
            return await api.retrieve(made["id"])
        finally:
            await api.close()

    failed = asyncio.run(scenario())
    assert failed["status"] == "failed" and failed["errors"]["data"][0]["code"] == "mismatched_url"


def test_results_are_read_from_openai_and_vllm_lines():
    ok = {"custom_id": "a", "response": {"status_code": 200, "body": {"choices": []}}, "error": None}
    expired = {"custom_id": "b", "response": None, "error": {"code": "batch_expired", "message": "too late"}}
    vllm_error = {
        "custom_id": "c",
        "response": {"status_code": 400, "request_id": "x"},
        "error": {"error": {"message": "bad schema", "type": "BadRequestError", "code": 400}},
    }
    text = "\n".join(json.dumps(x) for x in (ok, expired, vllm_error)).encode()
    results = read_results(text, b"torn line without json\n")
    assert results["a"].body == {"choices": []}
    assert results["b"].error == "batch_expired too late"
    assert results["c"].error == "HTTP 400: bad schema"


def test_reasoning_tokens_of_batched_calls_are_counted_as_live_ones_are(mock_server, tmp_path):
    options = {
        "steps": "  - generate: {model: m, prompt: en/answer}\n",
        "inputs": [f"[[mock:think=field]] question {i}" for i in range(N)],
    }
    said, summary = run_to_end(project(tmp_path / "batched", mock_server.url, **options))
    assert len(said) == 1
    live = project(tmp_path / "live", mock_server.url, **options)
    kind, reference = run(live, batch=False)
    assert kind == "done"
    batched, counted = summary.models["m"], reference.models["m"]
    assert batched["reasoning_tokens"] > 0 and batched["reasoning_tokens"] == counted["reasoning_tokens"]
