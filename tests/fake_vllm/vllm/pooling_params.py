"""``vllm.pooling_params`` of the test double."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PoolingParams:
    use_activation: bool | None = None
