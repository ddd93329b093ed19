"""Run the example pipelines on the mock OpenAI server and normalise what they write, for golden tests.

Why it exists: a large refactor moves steps, executors and the pipeline module. The outputs of every
``examples/*.yaml`` pipeline were recorded with the pre-refactor code (``tests/fixtures/golden/record.py``)
and ``tests/test_golden_examples.py`` replays them with the current code. Both go through this module so
the two runs are made the same way, and both touch the product only through its command line
(``python -m joydataforge run ...``): internal module paths are exactly what the refactor changes.

The mechanism:

- the examples folder is copied to a scratch folder (an example writes its call cache next to itself, and
  ``dialogue_binary.yaml`` reads ``../out/dialogue/split/test.jsonl``), with ``run.cache`` switched off in
  every copied pipeline so each run really calls the model;
- every model name an example can use is mapped to ``backend: openai`` at the in-process mock server
  (``tests/mock_openai``), from the recorded ``tests/fixtures/golden/models.yaml`` whose ``base_url`` is a
  placeholder; the two vLLM models keep ``backend: vllm`` and run on the ``vllm`` test double
  (``tests/fake_vllm``, put on ``PYTHONPATH`` of the child process, as tests/test_vllm_backend.py does);
- each pipeline runs in a child process with ``sys.executable`` (``PYTHONPATH`` is inherited, so
  ``PYTHONPATH=<old checkout>/src`` runs the old code);
- ``data.jsonl``, ``failures.jsonl`` and the stable counts of ``summary.json`` are normalised (see
  :func:`normalise_value`, :func:`stable_summary`) into text that must match byte for byte.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
GOLDEN = REPO_ROOT / "tests" / "fixtures" / "golden"
FAKE_VLLM = REPO_ROOT / "tests" / "fake_vllm"
MODELS_TEMPLATE = GOLDEN / "models.yaml"
URL_PLACEHOLDER = "http://mock-openai.invalid/v1"
WORK_TOKEN = "<WORK>"
MOCK_TOKEN = "<MOCK_URL>"
RUN_TIMEOUT_S = 120

# Keys that exist only for a llama.cpp model (or name a local file): the openai backend refuses or
# ignores them, so they are dropped when an entry is pointed at the mock.
LLAMACPP_ONLY_KEYS = ("model_path", "n_ctx", "n_threads", "chat_template")

# Keys whose values are wall-clock measurements: present in summary.json only, never in records (checked
# by running every example twice and diffing, see record.py --check).
SUMMARY_DROP = ("seconds", "output_dir")
MODEL_USAGE_DROP = ("mean_latency", "latency", "seconds", "total_latency")


# --------------------------------------------------------------------------------------------------
# Which examples, and how each is run
# --------------------------------------------------------------------------------------------------


def pipeline_stems(examples: Path = EXAMPLES) -> list[str]:
    """Stems of the example files that are pipelines (a top-level ``steps:``), not models or taxonomies."""
    stems = []
    for path in sorted(examples.glob("*.yaml")):
        data = yaml.safe_load(path.read_text("utf-8"))
        if isinstance(data, dict) and "steps" in data:
            stems.append(path.stem)
    return stems


@dataclass
class Plan:
    """How one example is run: commands before it (another example, a split), and extra child env."""

    stem: str
    before: list[list[str]] = field(default_factory=list)  # joyforge argv lists; {WORK} is replaced
    pythonpath: list[Path] = field(default_factory=list)
    extra_outputs: list[str] = field(default_factory=list)  # files under {WORK}/out also compared


def plan_for(stem: str) -> Plan:
    """The run recipe of one example; the special cases are the examples' own documented commands."""
    if stem == "dialogue_binary":
        # Its input is the test set that `joyforge dialogue-split` makes from examples/dialogue.yaml's
        # output (the commands in the comments of both files).
        return Plan(stem, before=[
            ["run", "{WORK}/examples/dialogue.yaml", "-o", "{WORK}/out/dialogue", "--models", "{MODELS}",
             "--no-progress"],
            ["dialogue-split", "{WORK}/out/dialogue/data.jsonl", "-o", "{WORK}/out/dialogue/split",
             "--test-size", "2", "--seed", "0", "--no-xlsx"],
        ], extra_outputs=["dialogue/split/train.jsonl", "dialogue/split/test.jsonl", "dialogue/split/split.json"])
    if stem == "magpie_vllm":
        # backend: vllm runs in-process; the vllm test double stands in for the GPU (tests/fake_vllm).
        return Plan(stem, pythonpath=[FAKE_VLLM])
    return Plan(stem)


# --------------------------------------------------------------------------------------------------
# Models: every name an example can reach, pointed at the mock
# --------------------------------------------------------------------------------------------------


def _model_names_in(value: Any) -> set[str]:
    """Model names a pipeline's steps mention (``model``, ``critic``, ``fuser``, ``models``, ...)."""
    names: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("model", "critic", "fuser", "judge_model", "answer_model") and isinstance(item, str):
                names.add(item)
            elif key in ("models", "drafters", "judges") and isinstance(item, list):
                names.update(x for x in item if isinstance(x, str))
            elif key in ("models", "weights") and isinstance(item, dict):
                names.update(item)
            else:
                names |= _model_names_in(item)
    elif isinstance(value, list):
        for item in value:
            names |= _model_names_in(item)
    return names


def mock_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """One models.yaml entry re-pointed at the mock: same model id and parameters, ``backend: openai``.

    The model id is kept (``SmolLM2-135M-Instruct``): Magpie's ``template: auto`` guesses the chat format
    from it when a server cannot tell its template. vLLM entries are kept as they are (the test double).
    """
    if body.get("backend") == "vllm":
        return dict(body)
    entry = {k: copy.deepcopy(v) for k, v in body.items() if k not in LLAMACPP_ONLY_KEYS}
    entry.pop("api_key_env", None)
    entry.pop("pricing", None)
    entry.pop("requests_per_minute", None)
    entry.pop("tokens_per_minute", None)
    entry["backend"] = "openai"
    entry["base_url"] = URL_PLACEHOLDER
    return entry


def collect_models(model_files: Iterable[Path], pipelines: Iterable[Path]) -> dict[str, Any]:
    """Every model of the given models files, re-pointed at the mock; fails on a name no file defines."""
    models: dict[str, Any] = {}
    for path in model_files:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
        for name, body in (data.get("models") or {}).items():
            models[name] = mock_entry(body)
    used: set[str] = set()
    for path in pipelines:
        used |= _model_names_in(yaml.safe_load(path.read_text("utf-8")).get("steps"))
    missing = sorted(used - set(models))
    if missing:
        raise ValueError(f"models used by the examples but defined nowhere: {missing}")
    return {"models": dict(sorted(models.items()))}


def write_models_file(path: Path, base_url: str, template: Path = MODELS_TEMPLATE) -> Path:
    """The recorded model map with the live mock's ``base_url`` filled in."""
    path.write_text(template.read_text("utf-8").replace(URL_PLACEHOLDER, base_url), "utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def prepare_work(work: Path, examples: Path = EXAMPLES) -> Path:
    """Copy the examples folder into ``work/examples`` with the call cache off in every pipeline copy.

    Only the copies change: never write into examples/. The cache is off so that every run calls the
    (mock) model and a second run in the same folder cannot answer from the first.
    """
    target = work / "examples"
    shutil.copytree(examples, target, ignore=shutil.ignore_patterns(".joyforge-cache", "__pycache__"))
    for stem in pipeline_stems(target):
        path = target / f"{stem}.yaml"
        data = yaml.safe_load(path.read_text("utf-8"))
        data.setdefault("run", {})["cache"] = None
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
    (work / "out").mkdir(exist_ok=True)
    return target


def child_env(pythonpath: Iterable[Path] = ()) -> dict[str, str]:
    """The environment of a joyforge child: this one (with its PYTHONPATH), plus extra import paths."""
    env = dict(os.environ)
    parts = [str(p) for p in pythonpath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("NO_COLOR", "1")
    env["COLUMNS"] = "200"
    return env


def joyforge(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = RUN_TIMEOUT_S
             ) -> subprocess.CompletedProcess[str]:
    """``python -m joydataforge ARGV`` in a child process, as a user types it."""
    return subprocess.run([sys.executable, "-m", "joydataforge", *argv], cwd=cwd, env=dict(env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _fill(argv: list[str], work: Path, models: Path) -> list[str]:
    return [a.replace("{WORK}", str(work)).replace("{MODELS}", str(models)) for a in argv]


def run_example(stem: str, work: Path, models: Path, base_url: str) -> dict[str, str]:
    """Run one example (and what it needs first) and return its normalised output files by name.

    Raises AssertionError with the child's output when a command exits non-zero.
    """
    plan = plan_for(stem)
    env = child_env(plan.pythonpath)
    out = work / "out" / stem
    commands = [*plan.before, ["run", "{WORK}/examples/" + f"{stem}.yaml", "-o", str(out), "--models", "{MODELS}",
                               "--no-progress"]]
    for argv in commands:
        done = joyforge(_fill(argv, work, models), env, cwd=work)
        if done.returncode != 0:
            raise AssertionError(f"joyforge {' '.join(argv)} exited {done.returncode}\n"
                                 f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    files = collect_outputs(out, work, base_url)
    for rel in plan.extra_outputs:
        path = work / "out" / rel
        if path.exists():
            files["extra/" + rel] = normalise_file(path, work, base_url)
    return files


# --------------------------------------------------------------------------------------------------
# Normalising
# --------------------------------------------------------------------------------------------------


def normalise_value(value: Any, work: str, base_url: str) -> Any:
    """Replace the scratch folder and the mock's URL (the port changes every run) by fixed tokens."""
    if isinstance(value, str):
        if base_url in value:
            value = value.replace(base_url, MOCK_TOKEN)
        root = base_url.rsplit("/v1", 1)[0]
        if root in value:
            value = value.replace(root, MOCK_TOKEN.rstrip(">") + "_ROOT>")
        if work in value:
            value = value.replace(work, WORK_TOKEN)
        return value
    if isinstance(value, dict):
        return {k: normalise_value(v, work, base_url) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_value(v, work, base_url) for v in value]
    return value


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def normalise_jsonl(text: str, work: Path, base_url: str) -> str:
    """Each line parsed, normalised and re-serialised (key order kept: it is part of the output)."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            lines.append(_dump(normalise_value(json.loads(line), str(work), base_url)))
    return "".join(x + "\n" for x in lines)


def normalise_file(path: Path, work: Path, base_url: str) -> str:
    """A JSONL or JSON output file as normalised text."""
    text = path.read_text("utf-8")
    if path.suffix == ".jsonl":
        return normalise_jsonl(text, work, base_url)
    return json.dumps(normalise_value(json.loads(text), str(work), base_url), ensure_ascii=False, indent=2) + "\n"


def stable_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json without wall-clock values (``seconds``, latencies) and the output folder."""
    out = {k: copy.deepcopy(v) for k, v in summary.items() if k not in SUMMARY_DROP}
    models = out.get("models")
    if isinstance(models, dict):
        out["models"] = {name: {k: v for k, v in usage.items() if k not in MODEL_USAGE_DROP}
                         for name, usage in models.items()}
    return out


def collect_outputs(out: Path, work: Path, base_url: str) -> dict[str, str]:
    """data.jsonl, failures.jsonl (when not empty) and the stable part of summary.json, normalised."""
    files: dict[str, str] = {}
    data = out / "data.jsonl"
    files["data.jsonl"] = normalise_jsonl(data.read_text("utf-8"), work, base_url) if data.exists() else ""
    failures = out / "failures.jsonl"
    if failures.exists() and failures.read_text("utf-8").strip():
        files["failures.jsonl"] = normalise_jsonl(failures.read_text("utf-8"), work, base_url)
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    files["summary.json"] = json.dumps(normalise_value(stable_summary(summary), str(work), base_url),
                                       ensure_ascii=False, indent=2) + "\n"
    return files


# --------------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------------


def golden_files(stem: str, golden: Path = GOLDEN) -> dict[str, str]:
    """The recorded files of one example, by the same names :func:`run_example` returns."""
    folder = golden / stem
    return {p.relative_to(folder).as_posix(): p.read_text("utf-8")
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_golden(stem: str, files: Mapping[str, str], golden: Path = GOLDEN) -> None:
    """Replace one example's recorded files."""
    folder = golden / stem
    if folder.exists():
        shutil.rmtree(folder)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")


def diff_message(stem: str, expected: Mapping[str, str], actual: Mapping[str, str], limit: int = 120) -> str:
    """A unified diff per differing file, cut to ``limit`` lines each, for the assertion message."""
    parts = [f"example {stem}: output differs from tests/fixtures/golden/{stem}/ (recorded with the pre-refactor "
             f"code at 19ad789)"]
    for name in sorted(set(expected) | set(actual)):
        old, new = expected.get(name), actual.get(name)
        if old == new:
            continue
        if old is None or new is None:
            parts.append(f"--- {name}: {'missing now' if new is None else 'not recorded'}")
            continue
        diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"golden/{name}", f"now/{name}",
                                         lineterm="", n=1))
        shown = [_shorten(line) for line in diff[:limit]]
        if len(diff) > limit:
            shown.append(f"... {len(diff) - limit} more diff lines")
        parts.append("\n".join(shown))
    return "\n".join(parts)


def _shorten(line: str, width: int = 600) -> str:
    """Records are long single lines: keep the diff readable."""
    return line if len(line) <= width else line[:width] + f"... (+{len(line) - width} chars)"


_PORT_RE = re.compile(r"127\.0\.0\.1:\d+")
