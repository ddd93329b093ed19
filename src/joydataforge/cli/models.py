"""``joyforge models``: see and try the configured models."""

from __future__ import annotations

import asyncio
import time

import click
from rich.console import Console
from rich.table import Table

from ..models.config import ModelRegistry


def _registry(models_file: str | None) -> ModelRegistry:
    registry = ModelRegistry.load()
    return registry.merged(ModelRegistry.load(models_file)) if models_file else registry


@click.group("models")
def models_group() -> None:
    """Show and try the models in models.yaml."""


@models_group.command("list")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")
def list_models(models_file: str | None) -> None:
    """List named models: backend, model id, endpoint, limits. Keys are never shown, not even inside a URL."""
    registry = _registry(models_file)
    table = Table(title=f"models ({registry.source})", title_justify="left")
    for column in ("name", "backend", "model", "endpoint / file", "key from env", "concurrency", "rpm", "tpm"):
        table.add_column(column)
    for name in registry.names():
        m = registry.get(name)
        table.add_row(
            name,
            m.backend,
            m.model,
            m.endpoint if m.base_url or m.model_path else "",
            m.api_key_env or "-",
            str(m.max_concurrency),
            str(m.requests_per_minute or "-"),
            str(m.tokens_per_minute or "-"),
        )
    Console().print(table)


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
