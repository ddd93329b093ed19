"""What a model's tokens cost: the user's ``pricing:`` first, else a maintained price table.

The table is `genai-prices <https://pypi.org/project/genai-prices/>`_ (pydantic's, MIT): a few hundred KB of
prices of the hosted models of some thirty providers, kept up to date by its maintainers and released
often, with the batch API prices (``processing: batch``) of the providers that have them. It is a small,
pure-Python dependency whose version pins the table a plan uses; ``pip install -U genai-prices`` updates
it, and ``pricing:`` in models.yaml overrides it model by model (docs/cost.md).

A model is matched by its ``model`` id, the provider found from ``base_url`` when the table knows that
address, else from the id alone. A model that runs on this machine (no ``base_url``: llama.cpp, vLLM in
process, a local reward model) or on a self-hosted server (a loopback or private address) costs nothing
per token unless ``pricing:`` says otherwise; a hosted model the table does not know has no price, and the
plan says so rather than guess.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from .config import ModelConfig

_SAMPLE_TOKENS = 1000  # priced per thousand and scaled: the base tier, never a long-prompt surcharge tier


@dataclass(frozen=True)
class Price:
    """Prices per million tokens, where they come from, and the batch API's where there is one."""

    input_per_mtok: float
    output_per_mtok: float
    source: str
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None

    @property
    def has_batch(self) -> bool:
        return self.batch_input_per_mtok is not None and self.batch_output_per_mtok is not None

    def cost(self, prompt_tokens: float, completion_tokens: float, *, batch: bool = False) -> float:
        """The price of these tokens; ``batch`` at the batch price where there is one, else the standard one."""
        if batch and self.has_batch:
            assert self.batch_input_per_mtok is not None and self.batch_output_per_mtok is not None
            return (prompt_tokens * self.batch_input_per_mtok + completion_tokens * self.batch_output_per_mtok) / 1e6
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


def price_of(config: ModelConfig) -> Price | None:
    """The price of ``config``'s tokens, or ``None`` when nothing says what a hosted model costs."""
    host = _host(config.base_url)
    found = table_price(config.model, config.base_url if host is not None and not _is_private(host) else None)
    if config.pricing is not None:
        return _configured(config, found)
    if found is not None:
        return found
    if config.base_url is None:
        return Price(0.0, 0.0, "runs on this machine: no price per token")
    if host is not None and _is_private(host):
        return Price(0.0, 0.0, f"self-hosted server at {host}: no price per token")
    return None


def _configured(config: ModelConfig, table: Price | None) -> Price:
    """The user's ``pricing:``. Without batch prices of its own it takes the table's batch discount for the
    same model, when the table has one (the user's prices may be another currency or a negotiated rate)."""
    pricing = config.pricing
    assert pricing is not None
    source = f"pricing: of model '{config.name}' in models.yaml"
    batch_in, batch_out = pricing.batch_input_per_mtok, pricing.batch_output_per_mtok
    if (batch_in is None or batch_out is None) and table is not None and table.has_batch:
        assert table.batch_input_per_mtok is not None and table.batch_output_per_mtok is not None
        in_ratio = table.batch_input_per_mtok / table.input_per_mtok if table.input_per_mtok else 1.0
        out_ratio = table.batch_output_per_mtok / table.output_per_mtok if table.output_per_mtok else 1.0
        batch_in = pricing.input_per_mtok * in_ratio if batch_in is None else batch_in
        batch_out = pricing.output_per_mtok * out_ratio if batch_out is None else batch_out
        source += f" (batch: the discount of {table.source})"
    return Price(pricing.input_per_mtok, pricing.output_per_mtok, source, batch_in, batch_out)


def table_version() -> str | None:
    """The installed price table's version, or ``None`` when it is not installed."""
    module = _table()
    return getattr(module, "__version__", "?") if module is not None else None


def table_price(model: str, base_url: str | None = None) -> Price | None:
    """The table's price of ``model`` (its provider found from ``base_url`` when given), or ``None``."""
    if not model:
        return None
    return _table_price(model, base_url)


@lru_cache(maxsize=256)
def _table_price(model: str, base_url: str | None) -> Price | None:
    module = _table()
    if module is None:
        return None
    attempts: list[dict[str, Any]] = [{"provider_api_url": base_url}] if base_url else []
    attempts.append({})
    for where in attempts:
        try:
            standard = _per_mtok(module, model, where, None)
        except (LookupError, ValueError):
            continue
        if standard is None:
            continue
        (input_price, output_price), provider, model_id = standard
        batch = _per_mtok(module, model, where, {"processing": "batch"})
        batch_prices = batch[0] if batch is not None and batch[0] != (input_price, output_price) else (None, None)
        version = getattr(module, "__version__", "?")
        return Price(
            input_price,
            output_price,
            f"genai-prices {version}: {provider} {model_id}",
            batch_prices[0],
            batch_prices[1],
        )
    return None


def _per_mtok(
    module: Any, model: str, where: dict[str, Any], context: dict[str, str] | None
) -> tuple[tuple[float, float], str, str] | None:
    usage_in = module.Usage(input_tokens=_SAMPLE_TOKENS, output_tokens=0)
    usage_out = module.Usage(input_tokens=0, output_tokens=_SAMPLE_TOKENS)
    try:
        priced_in = module.calc_price(usage_in, model, price_context=context, **where)
        priced_out = module.calc_price(usage_out, model, price_context=context, **where)
    except (LookupError, ValueError):
        return None
    scale = 1e6 / _SAMPLE_TOKENS
    prices = (float(priced_in.input_price) * scale, float(priced_out.output_price) * scale)
    return prices, str(priced_in.provider.id), str(priced_in.model.id)


@lru_cache(maxsize=1)
def _table() -> Any:
    try:
        import genai_prices
    except ImportError:  # Python 3.10, or uninstalled: prices only from pricing:
        return None
    return genai_prices


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _is_private(host: str) -> bool:
    """A loopback, private or link-local address, or a name that means this machine."""
    if host in ("localhost", "host.docker.internal") or host.endswith((".local", ".internal", ".localhost")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local
