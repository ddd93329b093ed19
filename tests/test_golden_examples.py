"""Every example pipeline still writes what was recorded (first with the pre-refactor code, git 19ad789, which
proved the settings-first refactor byte-identical; then once on purpose for issue 14's intended changes).

Why: a refactor that moves steps, executors and the pipeline module must not change a single output
record. tests/fixtures/golden/ holds the normalised outputs of each examples/*.yaml pipeline, recorded
with the old code by tests/fixtures/golden/record.py; here each example runs again with the current code,
the same way (tests/golden_support.py): through the command line only (``python -m joydataforge run``),
on the mock OpenAI server (and, for a second record, every model on the vllm test double). data.jsonl
and failures.jsonl must match byte for byte after normalisation (scratch paths, the mock's URL);
summary.json must keep every recorded count (wall-clock numbers were never recorded; keys added since
are ignored).

No real model runs; each example takes about a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import golden_support as gs
from tests.mock_openai import MockServer, start_mock_server

MANIFEST = json.loads((gs.GOLDEN / "manifest.json").read_text("utf-8"))
CASES = [(variant, stem) for variant, examples in sorted(MANIFEST["variants"].items()) for stem in sorted(examples)]


@pytest.fixture(scope="module")
def golden_mock() -> Iterator[MockServer]:
    """One mock server for the module: its replies depend only on each request, never on earlier ones."""
    server = start_mock_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def work_for(tmp_path_factory: pytest.TempPathFactory, golden_mock: MockServer) -> Callable[[str], tuple[Path, Path]]:
    """A scratch copy of examples/ (cache off) and the model map for one variant, made once per variant."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(variant: str) -> tuple[Path, Path]:
        if variant not in made:
            work = tmp_path_factory.mktemp(f"golden-{variant}")
            gs.prepare_work(work)
            models = gs.write_models_file(work / "models.yaml", golden_mock.url, gs.VARIANTS[variant].models_template)
            made[variant] = (work, models)
        return made[variant]

    return get


def _changed_example_note(variant: str, stem: str) -> str:
    """Say so when the example file itself differs from the one recorded: that alone changes outputs."""
    recorded = MANIFEST["variants"][variant][stem]["example_sha256"]
    now = hashlib.sha256((gs.EXAMPLES / f"{stem}.yaml").read_bytes()).hexdigest()
    if recorded == now:
        return ""
    return f"\nnote: examples/{stem}.yaml itself changed since the recording (sha256 {recorded[:12]} -> {now[:12]})"


@pytest.mark.parametrize(("variant", "stem"), CASES, ids=[f"{v}-{s}" for v, s in CASES])
def test_example_output_matches_golden(
    variant: str, stem: str, work_for: Callable[[str], tuple[Path, Path]], golden_mock: MockServer
) -> None:
    work, models = work_for(variant)
    spec = gs.VARIANTS[variant]
    expected = gs.golden_files(stem, spec.golden)
    actual = gs.comparable(gs.run_example(stem, work, models, golden_mock.url, spec), expected)
    assert expected, f"no golden files for {variant}/{stem}"
    where = spec.golden.relative_to(gs.REPO_ROOT).as_posix() + f"/{stem}/"
    if actual != expected:
        pytest.fail(
            gs.diff_message(stem, expected, actual, where=where) + _changed_example_note(variant, stem), pytrace=False
        )


def test_every_example_pipeline_is_recorded_or_skipped_with_a_reason() -> None:
    """A new example (or a renamed one) must be recorded, or skipped with its reason in golden_support."""
    stems = set(gs.pipeline_stems())
    for variant in gs.VARIANTS:
        recorded = set(MANIFEST["variants"].get(variant, {}))
        skipped = set(gs.SKIPPED[variant])
        assert recorded | skipped == stems, (
            f"{variant}: examples not recorded: {sorted(stems - recorded - skipped)}; "
            f"recorded but gone: {sorted((recorded | skipped) - stems)}"
        )
        assert not recorded & skipped
