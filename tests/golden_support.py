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
- a second record (:data:`VARIANTS` ``fake_vllm``, in ``tests/fixtures/golden/fake_vllm/``) runs every
  model on the vllm test double, whose replies vary, so the judging, pairing and tagging paths that the
  mock's echoes never reach are covered too;
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
import shutil
import subprocess
import sys
import time
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
FAKE_VLLM_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
WORK_TOKEN = "<WORK>"
MOCK_TOKEN = "<MOCK_URL>"
MOCK_ROOT_TOKEN = "<MOCK_ROOT>"
RUN_TIMEOUT_S = 120

# Examples that cannot run on a stand-in, by variant, with the reason. On the mock every example runs
# (magpie_vllm on tests/fake_vllm, its models being backend: vllm).
SKIPPED: dict[str, dict[str, str]] = {
    "mock": {},
    "fake_vllm": {
        "magpie_vllm": "already runs on tests/fake_vllm in the mock variant (its models are backend: vllm)",
        "dialogue_binary": "its input comes from dialogue.yaml, whose turns the fake's random JSON never echoes "
        "(check_content rejects them), so there is no test set to split",
    },
}

# Keys that exist only for a llama.cpp model (or name a local file): the openai backend refuses or
# ignores them, so they are dropped when an entry is pointed at the mock.
LLAMACPP_ONLY_KEYS = ("model_path", "n_ctx", "n_threads", "chat_template")

# Keys whose values are wall-clock measurements: present in summary.json only, never in records (checked
# by running every example twice and diffing, see record.py --check).
SUMMARY_DROP = ("seconds", "output_dir")
SEED_TOKEN = "<SEED>"
MODEL_USAGE_DROP = ("mean_latency", "latency_total", "concurrency")  # timings; the adaptive limit follows them


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


@dataclass(frozen=True)
class Variant:
    """Which stand-in answers the model calls: the mock OpenAI server, or the vllm test double.

    ``mock`` is the main record: every model at the mock, ``backend: openai``. Its replies are echoes and
    minimal JSON, so identical candidates end the dpo examples early and Magpie drops every echoed
    instruction; ``fake_vllm`` (every model ``backend: vllm`` on tests/fake_vllm, whose seeded replies vary
    with prompt, seed, sample and temperature) takes those examples through judging, pairing and tagging.
    """

    name: str
    models_template: Path
    golden: Path
    pythonpath: tuple[Path, ...] = ()


VARIANTS: dict[str, Variant] = {
    "mock": Variant("mock", GOLDEN / "models.yaml", GOLDEN),
    "fake_vllm": Variant("fake_vllm", GOLDEN / "models_fake_vllm.yaml", GOLDEN / "fake_vllm", (FAKE_VLLM,)),
}


@dataclass
class Plan:
    """How one example is run: commands before it (another example, a split), and extra child env."""

    stem: str
    before: list[list[str]] = field(default_factory=list)  # joyforge argv lists; {WORK}, {MODELS} replaced
    pythonpath: list[Path] = field(default_factory=list)
    extra_outputs: list[str] = field(default_factory=list)  # files under {WORK}/out also compared


def plan_for(stem: str) -> Plan:
    """The run recipe of one example; the special cases are the examples' own documented commands."""
    if stem == "dialogue_binary":
        # Its input is the test set that `joyforge dialogue-split` makes from examples/dialogue.yaml's
        # output (the commands in the comments of both files). dialogue.yaml alone (limit: 2) yields no
        # turns on the mock: its first dialogue has a turn checked by a regex pattern, which the mock's
        # minimal JSON does not honour. The whole file (--limit 9) has two dialogues it can label.
        return Plan(
            stem,
            before=[
                [
                    "run",
                    "{WORK}/examples/dialogue.yaml",
                    "-o",
                    "{WORK}/out/dialogue",
                    "--models",
                    "{MODELS}",
                    "--no-progress",
                    "--limit",
                    "9",
                    "--overwrite",
                ],
                [
                    "dialogue-split",
                    "{WORK}/out/dialogue/data.jsonl",
                    "-o",
                    "{WORK}/out/dialogue/split",
                    "--test-size",
                    "2",
                    "--seed",
                    "0",
                    "--no-xlsx",
                ],
            ],
            extra_outputs=["dialogue/split/train.jsonl", "dialogue/split/test.jsonl", "dialogue/split/split.json"],
        )
    if stem == "magpie_vllm":
        # backend: vllm runs in-process; the vllm test double stands in for the GPU (tests/fake_vllm), as
        # tests/test_vllm_backend.py::test_example_magpie_vllm_runs does.
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


def collect_models(model_files: Iterable[Path], pipelines: Iterable[Path], builtin: Path) -> dict[str, Any]:
    """Every model of the examples' models files, plus the built-in ones a pipeline names (``smollm2``,
    ``smollm2-greedy``), re-pointed at the mock; fails on a name no file defines."""
    used: set[str] = set()
    for path in pipelines:
        used |= _model_names_in(yaml.safe_load(path.read_text("utf-8")).get("steps"))
    models: dict[str, Any] = {}
    for name, body in ((yaml.safe_load(builtin.read_text("utf-8")) or {}).get("models") or {}).items():
        if name in used:
            models[name] = mock_entry(body)
    for path in model_files:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
        for name, body in (data.get("models") or {}).items():
            models[name] = mock_entry(body)
    missing = sorted(used - set(models))
    if missing:
        raise ValueError(f"models used by the examples but defined nowhere: {missing}")
    return {"models": dict(sorted(models.items()))}


def fake_vllm_models(mock_models: Mapping[str, Any]) -> dict[str, Any]:
    """The mock model map with every model on the vllm test double instead (same names and parameters).

    ``max_concurrency`` is left to the vllm default (256): the fake sleeps per batch, so serial calls
    would only make the run slower, and its replies do not depend on batching.
    """
    models: dict[str, Any] = {}
    for name, body in mock_models["models"].items():
        if body.get("backend") == "vllm":
            models[name] = dict(body)
            continue
        entry = {k: copy.deepcopy(v) for k, v in body.items() if k not in ("base_url", "max_concurrency")}
        entry["backend"] = "vllm"
        entry["model"] = FAKE_VLLM_MODEL
        models[name] = entry
    return {"models": models}


def write_models_file(path: Path, base_url: str, template: Path = MODELS_TEMPLATE) -> Path:
    """The recorded model map with the live mock's ``base_url`` filled in."""
    path.write_text(template.read_text("utf-8").replace(URL_PLACEHOLDER, base_url), "utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def _text_checks_off(step: dict) -> None:
    """``text_checks: false`` on a step (short or long form) whose kind has that setting."""
    from joydataforge.config.kinds import BUILTIN_CONFIGS

    kind, settings = (step["kind"], step) if "kind" in step else next(iter(step.items()))
    config = BUILTIN_CONFIGS.get(kind)
    if config is not None and "text_checks" in config.model_fields and isinstance(settings, dict):
        settings.setdefault("text_checks", False)


def prepare_work(work: Path, examples: Path = EXAMPLES) -> Path:
    """Copy the examples folder into ``work/examples`` with the call cache off in every pipeline copy.

    Only the copies change: never write into examples/. The cache is off so that every run calls the
    (mock) model and a second run in the same folder cannot answer from the first. Text checks are off: the
    mock echoes its prompt (scaffolding, by the checks' rules) and answers schemas with one-letter strings,
    which would send every generated text down the failure path; the checks have tests of their own.
    """
    target = work / "examples"
    shutil.copytree(examples, target, ignore=shutil.ignore_patterns(".joyforge-cache", "__pycache__"))
    for stem in pipeline_stems(target):
        path = target / f"{stem}.yaml"
        data = yaml.safe_load(path.read_text("utf-8"))
        data.setdefault("run", {})["cache"] = None
        for step in data.get("steps") or []:
            _text_checks_off(step)
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


def joyforge(
    argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``python -m joydataforge ARGV`` in a child process, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "joydataforge", *argv],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _fill(argv: list[str], work: Path, models: Path) -> list[str]:
    return [a.replace("{WORK}", str(work)).replace("{MODELS}", str(models)) for a in argv]


def run_example(
    stem: str, work: Path, models: Path, base_url: str, variant: Variant = VARIANTS["mock"]
) -> dict[str, str]:
    """Run one example (and what it needs first) in ``work`` and return its normalised outputs by name.

    ``work`` is a folder made by :func:`prepare_work` for this variant only (dialogue_binary reads the
    fixed path ``out/dialogue``, so two variants must not share one). Raises AssertionError with the
    child's output when a command exits non-zero.
    """
    plan = plan_for(stem)
    env = child_env([*variant.pythonpath, *plan.pythonpath])
    out = work / "runs" / stem  # not out/: dialogue_binary's input is made in out/dialogue
    commands = [
        *plan.before,
        ["run", "{WORK}/examples/" + f"{stem}.yaml", "-o", str(out), "--models", "{MODELS}", "--no-progress"],
    ]
    for argv in commands:
        filled = _fill(argv, work, models)
        started = time.time()
        done = joyforge(filled, env, cwd=work)
        if done.returncode != 0 and not records_failed_verdict(done.returncode, filled, started):
            raise AssertionError(
                f"[{variant.name}] joyforge {' '.join(argv)} exited {done.returncode}\n"
                f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
            )
    files = collect_outputs(out, work, base_url)
    for rel in plan.extra_outputs:
        path = work / "out" / rel
        if path.exists():
            files["extra/" + rel] = normalise_file(path, work, base_url)
    return files


# Exit statuses of `joyforge run` for a run that finished with failed records, where the code at 19ad789
# exited 0: 3 (some records failed) and 4 (none succeeded), added by the refactor (`joyforge run --help`).
# The failed records themselves are compared through failures.jsonl and summary.json.
RECORDS_FAILED_EXITS = (3, 4)


def records_failed_verdict(code: int, argv: list[str], started: float) -> bool:
    """Whether a non-zero exit only reports failed records of a run that finished: the run's summary.json
    was written by this run and counts failed records. Anything else (a crash, a config error) is not."""
    if code not in RECORDS_FAILED_EXITS or argv[:1] != ["run"] or "-o" not in argv:
        return False
    summary = Path(argv[argv.index("-o") + 1]) / "summary.json"
    if not summary.exists() or summary.stat().st_mtime < started - 1:
        return False
    data = json.loads(summary.read_text("utf-8"))
    return int(data.get("failed", 0)) > 0


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
            value = value.replace(root, MOCK_ROOT_TOKEN)
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


def _without_call_seeds(record: Any) -> Any:
    """A call's seed in its provenance is derived from the call's identity, which holds the mock's base URL: a
    new port each run. The replies do not depend on it (the stand-in's do, and they are compared)."""
    if isinstance(record, dict):
        meta = record.get("_meta")
        if isinstance(meta, dict):
            for call in meta.get("calls") or []:
                if isinstance(call, dict) and isinstance(call.get("params"), dict) and "seed" in call["params"]:
                    call["params"]["seed"] = SEED_TOKEN
    return record


def normalise_jsonl(text: str, work: Path, base_url: str) -> str:
    """Each line parsed, normalised and re-serialised (key order kept: it is part of the output)."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            lines.append(_dump(_without_call_seeds(normalise_value(json.loads(line), str(work), base_url))))
    return "".join(x + "\n" for x in lines)


def normalise_file(path: Path, work: Path, base_url: str) -> str:
    """A JSONL or JSON output file as normalised text."""
    text = path.read_text("utf-8")
    if path.suffix == ".jsonl":
        return normalise_jsonl(text, work, base_url)
    return (
        json.dumps(normalise_value(json.loads(text), str(work), base_url), ensure_ascii=False, indent=2, sort_keys=True)
        + "\n"
    )


def stable_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json without wall-clock values (``seconds``, each model's ``latency_total`` and
    ``mean_latency``) and the output folder; the counts (records, calls, tokens, step counters) stay."""
    out = {k: copy.deepcopy(v) for k, v in summary.items() if k not in SUMMARY_DROP}
    models = out.get("models")
    if isinstance(models, dict):
        out["models"] = {
            name: {k: v for k, v in usage.items() if k not in MODEL_USAGE_DROP} for name, usage in models.items()
        }
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
    # Keys sorted: counters are inserted as records finish, and records run concurrently.
    files["summary.json"] = (
        json.dumps(
            normalise_value(stable_summary(summary), str(work), base_url), ensure_ascii=False, indent=2, sort_keys=True
        )
        + "\n"
    )
    return files


# --------------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------------


def comparable(actual: Mapping[str, str], expected: Mapping[str, str]) -> dict[str, str]:
    """The current outputs in the shape of the recorded ones: JSONL files as they are (byte for byte),
    JSON files (summary.json, split.json) cut down to the keys that were recorded.

    Why: the refactor adds keys to summary.json on purpose (``exit_status``, ``totals``, per-model
    ``structured_output``, ...); what must not change are the numbers that were there. A recorded key that
    is gone or holds another value still shows up in the diff.
    """
    out = dict(actual)
    for name, text in actual.items():
        if name.endswith(".json") and name in expected:
            cut = project(json.loads(text), json.loads(expected[name]))
            out[name] = json.dumps(cut, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    return out


def project(value: Any, recorded: Any) -> Any:
    """``value`` with only the dict keys that ``recorded`` has, recursively; lists and leaves as they are."""
    if isinstance(value, dict) and isinstance(recorded, dict):
        return {k: project(v, recorded[k]) for k, v in value.items() if k in recorded}
    return value


def golden_files(stem: str, golden: Path = GOLDEN) -> dict[str, str]:
    """The recorded files of one example, by the same names :func:`run_example` returns."""
    folder = golden / stem
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_text("utf-8") for p in sorted(folder.rglob("*")) if p.is_file()}


def write_golden(stem: str, files: Mapping[str, str], golden: Path = GOLDEN) -> None:
    """Replace one example's recorded files."""
    folder = golden / stem
    if folder.exists():
        shutil.rmtree(folder)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")


def diff_message(
    stem: str, expected: Mapping[str, str], actual: Mapping[str, str], limit: int = 40, where: str = ""
) -> str:
    """What differs, per file: for JSONL the changed fields of each changed line (records are long single
    lines, so a text diff alone hides where they differ), then a unified diff cut to ``limit`` lines."""
    where = where or f"tests/fixtures/golden/{stem}/"
    parts = [
        f"example {stem}: output differs from {where} (re-record on purpose only: tests/fixtures/golden/record.py)"
    ]
    for name in sorted(set(expected) | set(actual)):
        old, new = expected.get(name), actual.get(name)
        if old == new:
            continue
        if old is None or new is None:
            parts.append(f"=== {name}: {'missing now' if new is None else 'not recorded'}")
            continue
        old_lines, new_lines = old.splitlines(), new.splitlines()
        parts.append(f"=== {name}: {len(old_lines)} lines recorded, {len(new_lines)} now")
        if name.endswith(".jsonl"):
            for index, (a, b) in enumerate(zip(old_lines, new_lines)):
                if a != b:
                    changes = json_changes(json.loads(a), json.loads(b))
                    parts.append(
                        f"line {index + 1}: "
                        + "; ".join(changes[:8])
                        + (f"; ... {len(changes) - 8} more" if len(changes) > 8 else "")
                    )
        diff = list(difflib.unified_diff(old_lines, new_lines, f"golden/{name}", f"now/{name}", lineterm="", n=0))
        shown = [_shorten(line) for line in diff[:limit]]
        if len(diff) > limit:
            shown.append(f"... {len(diff) - limit} more diff lines")
        parts.append("\n".join(shown))
    return "\n".join(parts)


def json_changes(old: Any, new: Any, path: str = "$") -> list[str]:
    """``path: recorded -> now`` for every leaf that differs, and for keys added, removed or reordered."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in old:
            if key not in new:
                changes.append(f"{path}.{key} removed")
            else:
                changes += json_changes(old[key], new[key], f"{path}.{key}")
        changes += [
            f"{path}.{key} added: {_shorten(json.dumps(new[key], ensure_ascii=False), 120)}"
            for key in new
            if key not in old
        ]
        if not changes and list(old) != list(new):
            changes.append(f"{path}: key order {list(old)} -> {list(new)}")
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in json_changes(a, b, f"{path}[{i}]")]
    if old != new or type(old) is not type(new):
        return [
            f"{path}: {_shorten(json.dumps(old, ensure_ascii=False), 120)} -> "
            f"{_shorten(json.dumps(new, ensure_ascii=False), 120)}"
        ]
    return []


def _shorten(line: str, width: int = 300) -> str:
    """Records are long single lines: keep the diff readable."""
    return line if len(line) <= width else line[:width] + f"... (+{len(line) - width} chars)"
