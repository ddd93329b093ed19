"""What the commands print: counters as written (no emoji, no markup), tables that fit 80 columns, ``--json``."""

from __future__ import annotations

import io
import json

from click.testing import CliRunner
from rich.cells import cell_len
from rich.console import Console

from joydataforge.cli import cli as main
from joydataforge.cli.models import models_table
from joydataforge.cli.prompts import prompt_rows, prompts_table
from joydataforge.cli.run import print_summary
from joydataforge.cli.terminal import make_console
from joydataforge.config.kinds import BUILTIN_CONFIGS
from joydataforge.engine.summary import RunSummary
from joydataforge.models.config import ModelRegistry
from joydataforge.models.usage import ModelUsage

LONG_MODEL = "qwen2.5-72b-instruct-awq-int4"  # 29 characters: fits its column whole
LONG_URL = "https://inference.internal.example.com/v1/deployments/qwen2-5-72b-instruct/openai"


def rendered(renderable, console: Console | None = None) -> str:
    console = console or make_console(width=80)
    console.file = io.StringIO()
    console.print(renderable)
    return console.file.getvalue()


def assert_fits(text: str, width: int = 80) -> None:
    too_wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not too_wide, "\n".join(too_wide)
    assert "…" not in text  # nothing cut off with an ellipsis


def summary() -> RunSummary:
    usage = ModelUsage()
    usage.calls, usage.prompt_tokens, usage.completion_tokens = 1234, 987_654, 123_456
    return RunSummary(
        records_in=10,
        records_out=7,
        inputs_done=7,
        filtered=3,
        seconds=12.5,
        models={LONG_MODEL: usage.as_dict(), "smollm2": ModelUsage().as_dict()},
        steps={
            "vote_labels_of_drug_queries_v2": {
                "records_in": 10,
                "gated:label:药品": 3,
                "dropped:no_majority": 2,
                "[bold]markup[/bold]": 1,
                ":thumbs_up: emoji": 1,
            }
        },
        output_dir="out/run [1]",
    )


def capture_summary(console: Console) -> str:
    console.file = io.StringIO()
    print_summary(summary(), console)
    return console.file.getvalue()


def test_counters_print_as_written() -> None:
    for console in (make_console(width=80), Console(width=80, stderr=True)):  # magpie hands in its own console
        text = capture_summary(console)
        flat = " ".join(text.split())
        assert "gated:label:药品 3" in flat and "🏷" not in text
        assert "[bold]markup[/bold] 1" in flat and ":thumbs_up: emoji 1" in flat and "👍" not in text
        assert "output: out/run [1]" in text


def test_end_of_run_tables_fit_80_columns() -> None:
    text = capture_summary(make_console(width=80))
    assert_fits(text)
    assert LONG_MODEL in text  # the model's whole name, on one line
    flat = " ".join(text.split())
    for shown in ("calls 1,234", "tokens in 987,654", "out 123,456", "mean latency", "vote_labels_of_drug_queries_v2"):
        assert shown in flat, shown


def test_models_list_fits_80_columns_with_long_names() -> None:
    registry = ModelRegistry.from_dict(
        {
            "models": {
                LONG_MODEL: {
                    "backend": "openai",
                    "model": "Qwen/Qwen2.5-72B-Instruct-AWQ",
                    "base_url": LONG_URL,
                    "api_key_env": "INTERNAL_INFERENCE_API_KEY",
                    "max_concurrency": 128,
                    "requests_per_minute": 6000,
                    "tokens_per_minute": 2_000_000,
                },
                "a-model-name-that-is-much-too-long-for-any-column": {"backend": "openai", "model": "m"},
            }
        },
        "test",
    )
    text = rendered(models_table(registry))
    assert_fits(text)
    flat = "".join(line.strip("│ ") for line in text.splitlines()).replace(" ", "")  # folded values rejoined
    for value in (LONG_MODEL, "Qwen/Qwen2.5-72B-Instruct-AWQ", "$INTERNAL_INFERENCE_API_KEY", "tpm2,000,000"):
        assert value.replace(" ", "") in flat, value
    assert LONG_URL in flat


def test_prompts_list_fits_80_columns_with_long_names() -> None:
    rows = prompt_rows() + [
        {
            "name": "zh/a_very_long_prompt_name_for_a_custom_domain_check",
            "fields": ["input", "history", "options", "a_long_field_name"],
            "description": "A long description. Its second sentence is left for `prompts show`.",
            "schema": True,
        }
    ]
    text = rendered(prompts_table(rows))
    assert_fits(text)
    assert "second sentence" not in text
    assert "en/answer" in text and "fields: input" in text


def test_list_commands_print_json() -> None:
    runner = CliRunner()
    models = json.loads(runner.invoke(main, ["models", "list", "--json"]).output)
    smollm2 = next(m for m in models if m["name"] == "smollm2")
    assert smollm2["backend"] and smollm2["max_concurrency"] >= 1
    assert all("api_key" not in m for m in models)  # only the variable's name, never a key
    prompts = json.loads(runner.invoke(main, ["prompts", "list", "--json"]).output)
    answer = next(p for p in prompts if p["name"] == "zh/answer")
    assert answer["fields"] == ["input"] and answer["description"]
    steps = json.loads(runner.invoke(main, ["steps", "list", "--json"]).output)
    assert [s["kind"] for s in steps] == sorted(BUILTIN_CONFIGS)
    by_kind = {s["kind"]: s["summary"] for s in steps}
    assert by_kind["minhash_dedup"] == BUILTIN_CONFIGS["minhash_dedup"].summary and by_kind["generate"]
