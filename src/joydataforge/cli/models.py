"""``joyforge models``: see and try the configured models."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
from rich.table import Table

from ..models.config import ModelRegistry
from .terminal import echo_json, make_console, name_table, number, pairs_text, plain


def _registry(models_file: str | None) -> ModelRegistry:
    registry = ModelRegistry.load()
    return registry.merged(ModelRegistry.load(models_file)) if models_file else registry


@click.group("models")
def models_group() -> None:
    """Show and try the models in models.yaml."""


def model_rows(registry: ModelRegistry) -> list[dict[str, Any]]:
    """One plain dict per named model: what ``models list`` shows and ``--json`` prints. Never a key."""
    rows = []
    for name in registry.names():
        m = registry.get(name)
        rows.append(
            {
                "name": name,
                "backend": m.backend,
                "model": m.model,
                "endpoint": m.endpoint if m.base_url or m.model_path else None,
                "api_key_env": m.api_key_env,
                "max_concurrency": m.max_concurrency,
                "requests_per_minute": m.requests_per_minute,
                "tokens_per_minute": m.tokens_per_minute,
            }
        )
    return rows


def models_table(registry: ModelRegistry) -> Table:
    """The models as a two-column table (name, then its settings as ``key value`` pairs): whole at 80 columns."""
    table = name_table(f"models ({registry.source})", "name", "backend · model · endpoint · key · limits")
    for row in model_rows(registry):
        details: list[tuple[str, Any]] = [("", row["backend"]), ("", row["model"])]
        if row["endpoint"]:
            details.append(("", row["endpoint"]))
        details.append(("key from", f"${row['api_key_env']}" if row["api_key_env"] else "-"))
        details.append(("concurrency", row["max_concurrency"]))
        if row["requests_per_minute"]:
            details.append(("rpm", number(row["requests_per_minute"])))
        if row["tokens_per_minute"]:
            details.append(("tpm", number(row["tokens_per_minute"])))
        table.add_row(plain(row["name"]), pairs_text(details))
    return table


@models_group.command("list")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (for programs).")
def list_models(models_file: str | None, as_json: bool) -> None:
    """List named models: backend, model id, endpoint, limits. Keys are never shown, not even inside a URL."""
    registry = _registry(models_file)
    if as_json:
        echo_json(model_rows(registry))
        return
    make_console().print(models_table(registry))


@models_group.command("check")
@click.argument("name")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")
@click.option("--prompt", default="Say hello in one short sentence.", help="What to ask.")
def check_model(name: str, models_file: str | None, prompt: str) -> None:
    """Send one short chat request to model NAME (uncached) and show the reply, tokens and latency."""
    from ..models.gateway import Gateway

    registry = _registry(models_file)
    registry.get(name)

    async def probe() -> None:
        gateway = Gateway(registry, cache=None)
        try:
            started = time.perf_counter()
            reply = await gateway.model(name).chat([{"role": "user", "content": prompt}], max_tokens=64)
            seconds = time.perf_counter() - started
        finally:
            await gateway.close()
        click.echo(
            f"model {name}: OK in {seconds:.2f}s, {reply.usage.prompt_tokens} prompt + "
            f"{reply.usage.completion_tokens} completion tokens"
        )
        click.echo(f"reply: {reply.text.strip()}")

    asyncio.run(probe())
