"""The settings reference in ``docs/reference/``, generated from the configs.

``make docs`` (``python -m joydataforge.config.reference docs/reference``) writes one page per method (its
kinds, each with its docstring, a table of settings and the example), a page for the pipeline file, one for
``models.yaml`` and an index. A test regenerates the pages and fails when the committed ones differ, so the
reference cannot drift from the code the way a hand-written one did.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import replace
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel

from ..models.config import ModelConfig, Pricing
from .base import StepConfig
from .describe import SettingDoc, by_method, doc_of, example_yaml, settings_of, shipped
from .kinds import BUILTIN_CONFIGS
from .pipeline import InputConfig, OutputConfig, Pipeline, RunConfig

HEADER = (
    "<!-- Generated from the configs by `make docs` (python -m joydataforge.config.reference docs/reference). "
    "Do not edit: change the config's descriptions and regenerate. -->\n"
)

GUIDES: dict[str, tuple[str, str]] = {
    "generate": ("Pipelines", "../pipelines.md"),
    "dedup": ("Evaluation and filtering", "../evaluation.md"),
    "vote": ("Several models", "../multi-model.md"),
    "joint": ("Several models", "../multi-model.md"),
    "critique": ("Several models", "../multi-model.md"),
    "rewrite": ("Rewrite, seedless, dialogue intent", "../rewrite-seedless-dialogue.md"),
    "seedless": ("Rewrite, seedless, dialogue intent", "../rewrite-seedless-dialogue.md"),
    "dialogue": ("Rewrite, seedless, dialogue intent", "../rewrite-seedless-dialogue.md"),
    "evol_instruct": ("Evol-Instruct", "../evol-instruct.md"),
    "magpie": ("Magpie", "../magpie.md"),
    "dpo": ("Preference data (DPO)", "../dpo.md"),
    "verify": ("Verification", "../verify.md"),
    "tool_dialogue": ("Tool-use trajectories", "../tool_dialogue.md"),
}
"""The hand-written guide that explains each method with worked examples (how it behaves, not its settings)."""


def _md(text: str) -> str:
    """Docstrings are reStructuredText-ish (````x````); the pages are Markdown (```x```)."""
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def settings_table(settings: Iterable[SettingDoc]) -> str:
    """A Markdown table: setting, type, default, description."""
    rows = ["| setting | type | default | description |", "|---|---|---|---|"]
    for s in settings:
        default = "**required**" if s.required else f"`{_cell(s.default)}`"
        rows.append(f"| `{s.name}` | `{_cell(s.type)}` | {default} | {_cell(s.description)} |")
    return "\n".join(rows) + "\n"


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split())


def _module_doc(config: type) -> str:
    module = sys.modules.get(config.__module__)
    return _first_paragraph(_md(module.__doc__ or "")) if module is not None else ""


def _page_name(method: str) -> str:
    return f"{method}.md"


def kind_section(config: type[StepConfig]) -> str:
    """One kind: summary, docstring, settings, example."""
    parts = [f"## `{config.kind}`\n", f"*{_md(config.summary)}*\n" if config.summary else ""]
    doc = doc_of(config)
    if doc:
        parts.append(_md(doc) + "\n")
    parts.append(f"### Settings\n\n{settings_table(settings_of(config))}")
    parts.append(f"### Example\n\n```yaml\nsteps:\n{_indent(example_yaml(config))}```\n")
    parts.append(f"`joyforge steps show {config.kind}` prints the same in a terminal.\n")
    return "\n".join(part for part in parts if part)


def _indent(text: str) -> str:
    return "".join(f"  {line}" if line.strip() else line for line in text.splitlines(keepends=True))


def method_page(method: str, configs: list[type[StepConfig]]) -> str:
    kinds = ", ".join(f"`{c.kind}`" for c in configs)
    parts = [HEADER, f"# {method}: {kinds}\n"]
    intro = _module_doc(configs[0])
    if intro:
        parts.append(intro + "\n")
    guide = GUIDES.get(method)
    if guide:
        parts.append(
            f"How it behaves, with worked examples: [{guide[0]}]({guide[1]}). "
            "All settings: [reference index](index.md).\n"
        )
    parts.extend(kind_section(config) for config in configs)
    return "\n".join(parts)


def _section_block(title: str, key: str, model: type[BaseModel]) -> str:
    doc = doc_of(model)
    intro = f"{_md(doc)}\n\n" if doc else ""
    return f"## `{key}:` {title}\n\n{intro}{settings_table(settings_of(model))}"


def pipeline_page(configs: dict[str, type[StepConfig]]) -> str:
    # base_dir is the file's own folder, not a setting; a step's type is "one of the kinds", not Python's list[Any]
    top = [
        replace(s, type="list of steps") if s.name == "steps" else s
        for s in settings_of(Pipeline)
        if s.name != "base_dir"
    ]
    first = next(iter(configs.values()))
    example = yaml.safe_dump([{first.kind: dict(first.example)}], allow_unicode=True, sort_keys=False)
    long_form = yaml.safe_dump([{"kind": first.kind, **dict(first.example)}], allow_unicode=True, sort_keys=False)
    parts = [
        HEADER,
        "# The pipeline file\n",
        _md(doc_of(Pipeline)) + "\n" if doc_of(Pipeline) else "",
        "A pipeline file is YAML with these top-level keys; relative paths in it are relative to the file.\n",
        settings_table(top),
        _section_block("where records come from", "input", InputConfig),
        _section_block("what a run writes", "output", OutputConfig),
        _section_block("how the run behaves", "run", RunConfig),
        "## `steps:` the steps records pass through\n",
        "A step is written in a short form, the kind as the only key:\n",
        f"```yaml\nsteps:\n{_indent(example)}```\n",
        "or in a long form, the kind beside its settings:\n",
        f"```yaml\nsteps:\n{_indent(long_form)}```\n",
        "A step of your own is named by its class path (`- my_package.my_module.MyStep: {...}`). The kinds and "
        "their settings: [index](index.md). `joyforge validate PIPELINE` checks a file without calling a model; "
        "`joyforge schema` prints its JSON Schema for editors.\n",
    ]
    return "\n".join(part for part in parts if part)


def _builtin_models() -> str:
    text = resources.files("joydataforge.models").joinpath("models.yaml").read_text("utf-8")
    models = (yaml.safe_load(text) or {}).get("models", {})
    rows = ["| name | backend | model |", "|---|---|---|"]
    for name, body in models.items():
        model = body.get("model") or body.get("model_path") or ""
        rows.append(f"| `{name}` | `{body.get('backend', '')}` | {_cell(str(model))} |")
    return "\n".join(rows) + "\n"


def models_page() -> str:
    parts = [
        HEADER,
        "# models.yaml\n",
        "Named models, each with its backend and limits. A pipeline names a file with `models:` (relative to the "
        "pipeline file), or `joyforge run --models FILE`; its entries are merged over the built-in ones by name. "
        "Keys never live in files: `api_key_env` names the environment variable that holds one. How the backends "
        "behave: [Models](../models.md).\n",
        "```yaml\nmodels:\n  NAME:\n    backend: openai\n    ...\n```\n",
        "## A model's settings\n",
        _md(doc_of(ModelConfig)) + "\n" if doc_of(ModelConfig) else "",
        settings_table(s for s in settings_of(ModelConfig) if s.name != "name"),
        "## `pricing:`\n",
        _md(doc_of(Pricing)) + "\n" if doc_of(Pricing) else "",
        settings_table(settings_of(Pricing)),
        "## Built-in models\n",
        _builtin_models(),
    ]
    return "\n".join(part for part in parts if part)


def index_page(groups: dict[str, list[type[StepConfig]]]) -> str:
    rows = ["| kind | what it does | page |", "|---|---|---|"]
    for method, configs in groups.items():
        for config in configs:
            rows.append(f"| `{config.kind}` | {_cell(config.summary)} | [{method}]({_page_name(method)}) |")
    return "\n".join(
        [
            HEADER,
            "# Settings reference\n",
            "Every setting of the pipeline file, of each step kind and of `models.yaml`, generated from the code "
            "that validates them. In a terminal: `joyforge steps list`, `joyforge steps show KIND`.\n",
            "- [The pipeline file](pipeline.md): `input`, `steps`, `output`, `run`, `models`\n"
            "- [models.yaml](models.md): backends, limits, retries, pricing\n",
            "## Step kinds\n",
            "\n".join(rows) + "\n",
        ]
    )


def render_pages(configs: dict[str, type[StepConfig]] | None = None) -> dict[str, str]:
    """Every page, by file name (relative to the reference folder)."""
    configs = shipped(BUILTIN_CONFIGS) if configs is None else dict(configs)
    groups = by_method(configs.values())
    pages = {_page_name(method): method_page(method, members) for method, members in groups.items()}
    pages["pipeline.md"] = pipeline_page(configs)
    pages["models.md"] = models_page()
    pages["index.md"] = index_page(groups)
    return pages


def write_pages(folder: Path, pages: dict[str, str]) -> list[Path]:
    """Write the pages and remove generated pages that are no longer made (a kind that was removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.md"):
        if stale.name not in pages and stale.read_text("utf-8").startswith(HEADER):
            stale.unlink()
    written = []
    for name, text in sorted(pages.items()):
        path = folder / name
        path.write_text(text, "utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m joydataforge.config.reference DOCS_REFERENCE_FOLDER", file=sys.stderr)
        return 2
    written = write_pages(Path(args[0]), render_pages())
    print(f"wrote {len(written)} pages to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
