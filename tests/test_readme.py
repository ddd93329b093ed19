"""The README stays what a newcomer needs: small, the two commands first, links that resolve, a Python
example that runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def text() -> str:
    return README.read_text("utf-8")


def test_readme_is_at_most_12_kb() -> None:
    size = len(README.read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes: move detail to docs/ (limit 12 KB)"


def test_readme_starts_with_the_two_commands() -> None:
    lines = [line for line in text().splitlines() if line.strip()]
    assert lines[0].startswith("# ")
    assert lines[1] == "```bash"
    assert lines[2].startswith("make demo ") and lines[3].startswith("make test ")
    assert lines[4] == "```"


def test_readme_links_resolve() -> None:
    targets = LINK.findall(text())
    assert any(t.startswith("docs/reference/") for t in targets) and "docs/reliability.md" in targets
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", text(), re.S)
    example = next(b for b in blocks if "LocalExecutor(pipeline)" in b)
    return example


def run_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run the README's Python example as written, in ``tmp_path``; its output lines."""
    source = python_example().replace('"examples/', f'"{ROOT}/examples/')
    monkeypatch.chdir(tmp_path)  # out/python-demo and the call cache land here
    exec(compile(source, "README.md", "exec"), {})
    return (tmp_path / "out" / "python-demo" / "data.jsonl").read_text("utf-8").splitlines()


def test_the_python_example_runs_on_a_scripted_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's API (Pipeline.from_dict, LocalExecutor.run_sync, the summary's fields) as written; the
    embedded model is replaced by a scripted backend so this runs in the fast suite."""
    from tests.scripted_backend import ScriptedBackend

    monkeypatch.setattr("joydataforge.models.gateway.create_backend", lambda config: ScriptedBackend())
    lines = run_example(tmp_path, monkeypatch)
    assert len(lines) == 2 and all('"target": "answer to: ' in line for line in lines)


@pytest.mark.slow
def test_the_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(run_example(tmp_path, monkeypatch)) == 2
