"""Pytest fixtures for the Hub stand-in.

- ``hub_standin``: a fresh stand-in per test, storing under the test's tmp folder;
- ``hub_env``: points ``huggingface_hub`` at it, in this process (its module constants, read when it was
  imported) and for child processes (``hub_env.env``, the environment a ``joyforge`` or ``python`` child gets:
  ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET``, a private ``HF_HOME``). Xet is off because the stand-in
  does not speak it: LFS files go through the LFS batch API instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .server import DEFAULT_TOKEN, RunningStandIn, start_hub_standin

__all__ = ["HubEnv", "hub_env", "hub_standin"]


@pytest.fixture
def hub_standin(tmp_path: Path) -> Iterator[RunningStandIn]:
    server = start_hub_standin(tmp_path / "hub-standin")
    try:
        yield server
    finally:
        server.close()


@dataclass
class HubEnv:
    server: RunningStandIn
    env: dict[str, str]  # for child processes
    token: str = DEFAULT_TOKEN

    @property
    def hub(self):  # the HubStandIn: its log, repos and checkouts
        return self.server.hub


@pytest.fixture
def hub_env(hub_standin: RunningStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubEnv:
    from huggingface_hub import constants

    url = hub_standin.url
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    home = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))  # never the developer's own login
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("JOYFORGE_CACHE_DIR", str(tmp_path / "joyforge-cache"))
    env = {
        **os.environ,
        "HF_ENDPOINT": url,
        "HF_TOKEN": DEFAULT_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "JOYFORGE_CACHE_DIR": str(tmp_path / "joyforge-cache"),
    }
    return HubEnv(hub_standin, env)
