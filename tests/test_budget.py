"""``run.budget`` (issue 15): a run stops cleanly before the call that would pass its budget, and says how to go on.

The pipelines call the mock OpenAI server, whose token counts are word counts and whose replies are cut at
``max_tokens`` words. The model is priced on output tokens only (``input_per_mtok: 0``) and every reply is cut
at ``max_tokens``: a call then costs exactly what the gateway reserves for it (``max_tokens`` priced), so a
budget of N calls' cost allows exactly N calls. Token limits count the prompt too, which the gateway can only
estimate before the call (the mock counts words); there the tests check the bounds that hold anyway.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import BudgetExceeded, ExitCode
from joydataforge.models.budget import BudgetLedger, BudgetLimits, Hold, Limit, Spend
from tests.support.harness import joyforge

REPO = Path(__file__).resolve().parent.parent
PER_CALL = 4.0  # max_tokens 4, each output token priced 1 (per million: 1,000,000)
QUESTION = "please answer question number {i} with a few words of text"  # replies are longer than 4 words


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def spend(folder: Path) -> dict:
    return json.loads((folder / "spend.json").read_text("utf-8"))


def project(
    tmp_path: Path, base_url: str, n: int = 10, *, run: str = "", steps: str | None = None, cache: bool = False
) -> Path:
    """A pipeline file with its models.yaml (models ``a`` and ``b``, both the mock) and ``n`` input records."""
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": QUESTION.format(i=i)}) + "\n" for i in range(n)), "utf-8"
    )
    price = "    pricing: {input_per_mtok: 0, output_per_mtok: 1000000}\n"
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        + "".join(
            f"  {name}:\n    backend: openai\n    model: mock\n    base_url: {base_url}\n"
            f"    max_concurrency: 4\n    max_retries: 0\n{price}"
            for name in ("a", "b")
        ),
        "utf-8",
    )
    steps = steps or "  - generate: {model: a, prompt: en/answer, params: {max_tokens: 4}}\n"
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\n"
        f"steps:\n{steps}"
        f"output: {{dir: out}}\nrun: {{concurrency: 4, cache: {'calls.sqlite' if cache else 'null'}{run}}}\n",
        "utf-8",
    )
    return path


def requests(server) -> int:
    return int(server.stats()["by_endpoint"].get("/v1/chat/completions", 0))


def test_a_budget_of_n_calls_makes_exactly_n_calls_then_stops_with_exit_5_and_one_line(
    tmp_path, mock_server, monkeypatch, capsys
):
    pipeline = project(tmp_path, mock_server.url, run=", budget: {cost: 14}")  # 3 calls of 4; a 4th would be 16
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.STOPPED == 5
    out = tmp_path / "out"
    assert requests(mock_server) == 3  # no call that would pass the budget was made
    assert len(lines(out / "data.jsonl")) == 3 and len(lines(out / "ledger.jsonl")) == 3
    assert lines(out / "failures.jsonl") == []  # the record that could not be paid for is unfinished, not failed
    assert spend(out)["cost"] == 12.0 <= 14
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_status"] == 5 and summary["stopped"].startswith("budget reached")
    last = err[-1]
    assert last == (
        "stopped: budget reached: spent 12 of run.budget.cost 14, every run of this output folder counted; the next "
        f"call to 'a' may cost up to 4; 3 records done; to go on with a larger budget: joyforge run {pipeline} "
        "--no-progress --budget 28"
    )
    assert sum(line.startswith("stopped:") for line in err) == 1


def test_the_command_it_says_resumes_with_the_larger_budget(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, mock_server.url, n=4)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress", "--budget", "8")
    assert code == 5 and requests(mock_server) == 2
    command = shlex.split(err[-1].split("to go on with a larger budget: ", 1)[1])
    assert command[:2] == ["joyforge", "run"] and command[-2:] == ["--budget", "16"]
    assert command.count("--budget") == 1  # the larger budget replaces the one given, not beside it
    code, err = joyforge(monkeypatch, capsys, *command[1:])
    assert code == ExitCode.OK, err
    out = tmp_path / "out"
    assert [r["id"] for r in lines(out / "data.jsonl")] == [f"r{i}" for i in range(4)]
    assert requests(mock_server) == 4  # the two records of the first run were not asked again
    assert spend(out)["models"]["a"]["calls"] == 4 and spend(out)["cost"] == 16.0 <= 16


def test_a_resume_with_the_same_budget_stops_at_once_and_says_so(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, mock_server.url, run=", budget: {cost: 8}")
    assert joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")[0] == 5
    assert requests(mock_server) == 2
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == 5
    assert requests(mock_server) == 2  # nothing more was asked
    assert err[-1].startswith("stopped: budget reached: spent 8 of run.budget.cost 8, every run of this output folder")
    assert "2 records done" in err[-1]


def test_calls_in_flight_never_take_the_spending_past_the_budget(tmp_path, mock_server, monkeypatch, capsys):
    """Four records in flight at once: reservations of calls in flight count, and a call that only they stand
    in the way of waits for them to settle, so the budget is used to the last call and never passed."""
    pipeline = project(tmp_path, mock_server.url, n=40, run=", budget: {cost: 70}")  # 17 calls of 4 = 68
    code, _ = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == 5
    assert requests(mock_server) == 17
    assert spend(tmp_path / "out")["cost"] == 68.0
    assert len(lines(tmp_path / "out" / "ledger.jsonl")) == 17


def test_a_limit_of_one_model_stops_the_run_when_that_model_reaches_it(tmp_path, mock_server, monkeypatch, capsys):
    steps = (
        "  - generate: {name: first, model: a, prompt: en/answer, params: {max_tokens: 4}}\n"
        "  - generate: {name: second, model: b, prompt: en/answer, output_field: other, params: {max_tokens: 4}}\n"
    )
    pipeline = project(tmp_path, mock_server.url, run=", budget: {cost: 1000, models: {b: {cost: 12}}}", steps=steps)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == 5
    out = tmp_path / "out"
    models = spend(out)["models"]
    assert models["b"]["calls"] == 3 and models["b"]["cost"] == 12.0
    assert models["a"]["calls"] in (4, 5, 6, 7)  # records in flight got their first call before b ran out
    assert len(lines(out / "data.jsonl")) == 3
    assert "spent 12 of run.budget.models.b.cost 12" in err[-1]
    assert err[-1].endswith(
        f"to go on, raise run.budget.models.b.cost in the pipeline file and run again: joyforge run {pipeline} "
        "--no-progress"
    )


def test_a_tokens_only_budget_is_never_passed(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, mock_server.url, n=10)
    assert joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress", "-o", str(tmp_path / "all"))[0] == 0
    per_record = spend(tmp_path / "all")["tokens"] / 10  # the records' prompts differ by a digit only
    mock_server.reset()
    limit = int(per_record * 5.5)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress", "--budget-tokens", str(limit))
    assert code == 5
    used = spend(tmp_path / "out")
    assert used["tokens"] <= limit
    assert used["cost"] > 0  # counted, though only tokens are limited
    # The prompt is estimated before the call (characters, not the mock's words): the last call that fits in
    # real tokens may not fit in its estimate, so one call fewer than 5 may be made, never more.
    assert requests(mock_server) in (4, 5)
    assert f"--budget-tokens {limit * 2}" in err[-1] and f"of run.budget.tokens {limit:,}" in err[-1]


def test_cache_hits_are_free_a_zero_budget_runs_from_the_cache_alone(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, mock_server.url, n=5, cache=True)
    assert joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress", "-o", str(tmp_path / "first"))[0] == 0
    assert requests(mock_server) == 5
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress", "--budget", "0")
    assert code == ExitCode.OK, err
    assert requests(mock_server) == 5
    out = tmp_path / "out"
    assert len(lines(out / "data.jsonl")) == 5
    assert spend(out)["cost"] == 0 and spend(out)["models"]["a"]["calls"] == 0


def test_overwrite_forgets_what_earlier_runs_spent(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, mock_server.url, n=3)
    assert joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")[0] == 0
    assert spend(tmp_path / "out")["cost"] == 12.0
    code, _ = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress", "--overwrite", "--budget", "12")
    assert code == 0
    assert spend(tmp_path / "out")["cost"] == 12.0


def test_sigkill_then_resume_keeps_what_the_killed_run_spent(tmp_path, mock_server):
    pipeline = project(tmp_path, mock_server.url, n=8, run=", concurrency: 1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    command = [sys.executable, "-m", "joydataforge", "run", str(pipeline), "--no-progress"]
    killed = subprocess.run(
        command, env={**env, "JOYFORGE_TEST_CRASH_AT": "ledger-written:3"}, capture_output=True, timeout=120
    )
    assert killed.returncode == -9
    out = tmp_path / "out"
    committed = len(lines(out / "ledger.jsonl"))  # 3 batches, of one record or more
    assert 3 <= committed < 8
    asked = requests(mock_server)
    spent = spend(out)["models"]["a"]
    # The spend is written before each commit: every call of a committed record is in it; calls made since the
    # last commit (records run ahead of the committer) are not, and the resume pays them again.
    assert committed <= spent["calls"] <= asked
    again = subprocess.run(
        [*command, "--budget", str(spent["cost"])], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 5
    assert requests(mock_server) == asked  # the killed run's spending is counted: not one more call
    assert f"spent {spent['cost']:g} of run.budget.cost {spent['cost']:g}" in again.stderr.strip().splitlines()[-1]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(lines(out / "data.jsonl")) == 8
    total = spend(out)["models"]["a"]
    assert total["calls"] == spent["calls"] + requests(mock_server) - asked
    assert total["cost"] == total["calls"] * PER_CALL


def test_a_budget_naming_an_unknown_model_is_a_one_line_error_before_any_call(
    tmp_path, mock_server, monkeypatch, capsys
):
    pipeline = project(tmp_path, mock_server.url, run=", budget: {models: {gpt4o: {cost: 1}}}")
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.CONFIG
    assert err == ["error: run.budget.models: 'gpt4o' is not a model of this run (known: " + err[0].split("known: ")[1]]
    assert requests(mock_server) == 0


def test_a_money_limit_over_a_model_without_a_price_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    pipeline = project(tmp_path, "https://llm.example.com/v1", run=", budget: {cost: 5}")
    text = (
        (tmp_path / "models.yaml")
        .read_text()
        .replace("    pricing: {input_per_mtok: 0, output_per_mtok: 1000000}\n", "")
    )
    (tmp_path / "models.yaml").write_text(text.replace("model: mock", "model: nobody-prices-this-model"))
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.CONFIG
    assert len(err) == 1 and "model 'a'" in err[0] and "has no known price" in err[0] and "pricing:" in err[0]
    # In tokens it can be limited.
    (tmp_path / "pipeline.yaml").write_text((tmp_path / "pipeline.yaml").read_text().replace("cost: 5", "tokens: 0"))
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == 5 and "run.budget.tokens 0" in err[-1]


def test_budget_settings_are_validated_like_any_setting(tmp_path, mock_server):
    from joydataforge.errors import ConfigError

    project(tmp_path, mock_server.url, run=", budget: {cost: -1, tokenz: 5}")
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_yaml(tmp_path / "pipeline.yaml")
    message = str(caught.value)
    assert "run.budget.cost" in message and "tokenz" in message


def test_the_library_executor_raises_budget_exceeded_with_its_limit(tmp_path, mock_server):
    pipeline = Pipeline.from_yaml(project(tmp_path, mock_server.url, run=", budget: {cost: 4}, progress: false"))
    with pytest.raises(BudgetExceeded) as caught:
        LocalExecutor(pipeline).run_sync()
    assert caught.value.detail() == {"measure": "cost", "limit": 4.0, "spent": 4.0, "model": None}
    assert requests(mock_server) == 1


# The ledger on its own.


def test_a_reservation_that_only_calls_in_flight_stand_in_the_way_of_waits_for_them():
    async def scenario() -> list[str]:
        ledger = BudgetLedger(BudgetLimits(Limit(cost=10.0)))
        first = await ledger.reserve("m", 0, 6.0)
        events = []

        async def second() -> Hold:
            hold = await ledger.reserve("m", 0, 6.0)  # 6 + 6 > 10 while the first is held
            events.append("second granted")
            return hold

        task = asyncio.create_task(second())
        await asyncio.sleep(0.01)
        events.append("first settles")
        ledger.settle(first, Spend(1, 0, 3, 3.0))  # it cost 3 of the 6 reserved
        ledger.settle(await task, Spend(1, 0, 6, 6.0))
        with pytest.raises(BudgetExceeded) as caught:  # 9 spent: 6 more cannot fit, whatever settles
            await ledger.reserve("m", 0, 6.0)
        assert caught.value.spent == 9.0 and caught.value.limit == 10.0
        await ledger.reserve("m", 0, 1.0)  # 1 more fits exactly
        return events

    assert asyncio.run(scenario()) == ["first settles", "second granted"]


def test_a_released_reservation_gives_its_room_back_and_each_model_keeps_its_own_limit():
    async def scenario() -> None:
        ledger = BudgetLedger(BudgetLimits(Limit(tokens=100), {"m": Limit(cost=1.0)}), {"m": Spend(1, 50, 0, 0.5)})
        hold = await ledger.reserve("m", 40, 0.4)
        with pytest.raises(TimeoutError):  # 50 spent + 40 held + 20 > 100: it waits for the held call
            await asyncio.wait_for(ledger.reserve("m", 20, 0.0), 0.05)
        ledger.release(hold)  # that call failed: nothing spent
        assert (await ledger.reserve("m", 20, 0.0)).tokens == 20
        with pytest.raises(BudgetExceeded) as caught:  # 0.5 spent + 0.6 > the model's 1.0
            await ledger.reserve("m", 0, 0.6)
        assert caught.value.model == "m" and caught.value.measure == "cost"
        assert "spent 0.5 of run.budget.models.m.cost 1" in caught.value.reason
        ledger.settle(await ledger.reserve("other", 10, 5.0), Spend(1, 5, 5, 5.0))  # no limit of its own
        assert ledger.this_run()["other"].tokens == 10 and ledger.this_run()["m"].tokens == 0
        with pytest.raises(BudgetExceeded) as caught:  # the run's tokens: 50 + 10 spent, 20 held, 41 more
            await ledger.reserve("other", 41, 0.0)
        assert caught.value.model is None and caught.value.measure == "tokens"

    asyncio.run(scenario())
