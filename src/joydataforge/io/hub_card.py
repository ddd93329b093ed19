"""The dataset card of a pushed split: YAML front matter the Hub and ``datasets`` read, and a body that says how
the data was made and how good it is.

Rendering is merging: the card already on the Hub (if any) keeps its other splits' sections (each between
``<!-- joyforge:begin CONFIG/SPLIT -->`` markers), its front-matter keys joyforge does not set, and any text
written outside the markers; this split's section and the header (title, how to load every split) are
written anew. The numbers are formatted by :mod:`joydataforge.evaluate.report`'s own helpers, so the card
reads exactly like ``joyforge eval``'s table and report.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .hub import DataSource, PushTarget, RunFacts, Shard
from .writers import BOOKKEEPING_COLUMN

_BEGIN = re.compile(r"<!-- joyforge:begin (?P<key>[^ ]+)(?: records=(?P<records>\d+))? -->\n?")
_HEADER_BEGIN, _HEADER_END = "<!-- joyforge:header -->", "<!-- joyforge:header end -->"
_SIZE_CATEGORIES = [  # the Hub's size_categories, by upper bound
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
]
_SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


@dataclass
class CardInput:
    """Everything the card of one pushed split says."""

    target: PushTarget
    source: DataSource
    facts: RunFacts
    shards: list[Shard]
    columns: list[tuple[str, str]]  # (name, Arrow type) of the pushed table
    metrics: dict[str, Any] | None = None  # joyforge eval's metrics JSON; None: not measured
    eval_note: str | None = None  # why there are no metrics, or where they came from
    languages: list[str] = field(default_factory=list)  # detected (detect_languages); --language overrides
    review_note: str | None = None  # the human review applied to the records, in words


def parquet_columns(shards: Iterable[Shard], folder: Path) -> list[tuple[str, str]]:
    """(name, type) of the pushed columns; a column whose values had no common type says it holds JSON text."""
    import pyarrow.parquet as pq

    from .readers import PARQUET_META_KEY

    for shard in shards:
        schema = pq.read_schema(folder / shard.path_in_repo)
        try:
            as_json = set(json.loads((schema.metadata or {}).get(PARQUET_META_KEY, b"{}")).get("json_columns", []))
        except (ValueError, AttributeError):
            as_json = set()
        return [(f.name, _column_type(f.name, str(f.type), f.name in as_json)) for f in schema]
    return []


def _column_type(name: str, arrow_type: str, as_json: bool) -> str:
    if not as_json:
        return arrow_type
    return "JSON text (the run's bookkeeping)" if name == BOOKKEEPING_COLUMN else "JSON text (mixed types)"


def detect_languages(records: Iterable[dict[str, Any]], limit: int = 2_000) -> list[str]:
    """``zh`` and/or ``en``, by the share of Han characters and Latin letters in the records' text.

    Looks at the string values of the first ``limit`` records (not ``id`` nor ``_meta``); a language counts
    from 10% of the letters on. Only these two are told apart: pass ``--language`` for any other.
    """
    han = latin = 0
    for index, record in enumerate(records):
        if index >= limit:
            break
        for key, value in record.items():
            if key in ("id", "_meta"):
                continue
            for text in _strings(value):
                han += sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")
                latin += sum(1 for ch in text if ch.isascii() and ch.isalpha())
    letters = han + latin
    found = []
    if letters and han / letters >= 0.1:
        found.append("zh")
    if letters and latin / letters >= 0.1:
        found.append("en")
    return found


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def size_category(count: int) -> str:
    for bound, name in _SIZE_CATEGORIES:
        if count < bound:
            return name
    return "n>1T"


def task_categories(card: CardInput) -> list[str]:
    """``text-generation`` (what synthesised data trains), and ``text-classification`` when records carry labels."""
    found = ["text-generation"]
    if card.metrics and card.metrics.get("labels"):
        found.append("text-classification")
    return found


def method_tags(facts: RunFacts) -> list[str]:
    return [task.replace("_", "-") for task, _ in facts.tasks.most_common()]


def render_card(card: CardInput, existing: str | None = None) -> str:
    """The README.md of the repo after this push: ``existing`` (the card on the Hub, if any) with this split's
    section replaced or added, the front matter merged, and everything outside joyforge's markers kept."""
    old_meta, old_body = split_front_matter(existing or "")
    sections, rest = _sections(old_body)
    sections[card.target.key] = (card.facts.records, _section(card))
    meta = _front_matter(card, old_meta, sections)
    header = _header(card, meta)
    body = "\n".join(
        [
            header,
            *(
                f"<!-- joyforge:begin {key} records={count} -->\n{text.strip()}\n<!-- joyforge:end {key} -->\n"
                for key, (count, text) in _ordered(sections)
            ),
        ]
    )
    if rest.strip():
        body += "\n" + rest.strip() + "\n"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n" + body


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """A card's YAML metadata (``{}`` when it has none or it does not parse) and its Markdown body."""
    match = re.match(r"^---\s*\n(.*?\n)?---\s*\n", text, re.S)
    if match is None:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1) or "") or {}
    except yaml.YAMLError:
        meta = {}
    return (meta if isinstance(meta, dict) else {}), text[match.end() :]


def _sections(body: str) -> tuple[dict[str, tuple[int, str]], str]:
    """joyforge's split sections of a card body by key (with their record counts), and the text outside them."""
    sections: dict[str, tuple[int, str]] = {}
    rest: list[str] = []
    position = 0
    start = body.find(_HEADER_BEGIN)
    end = body.find(_HEADER_END)
    if start >= 0 and end > start:
        body = body[:start] + body[end + len(_HEADER_END) :]
    for match in _BEGIN.finditer(body):
        if match.start() < position:
            continue
        key = match.group("key")
        closing = f"<!-- joyforge:end {key} -->"
        stop = body.find(closing, match.end())
        if stop < 0:
            continue
        rest.append(body[position : match.start()])
        sections[key] = (int(match.group("records") or 0), body[match.end() : stop])
        position = stop + len(closing)
    rest.append(body[position:])
    return sections, "".join(rest)


def _ordered(sections: dict[str, tuple[int, str]]) -> list[tuple[str, tuple[int, str]]]:
    return sorted(
        sections.items(),
        key=lambda kv: (
            kv[0].split("/")[0] != "default",
            kv[0].split("/")[0],
            _SPLIT_ORDER.get(kv[0].split("/")[-1], 3),
            kv[0],
        ),
    )


def _front_matter(card: CardInput, old: dict[str, Any], sections: dict[str, tuple[int, str]]) -> dict[str, Any]:
    target = card.target
    meta = dict(old)
    configs = [dict(c) for c in old.get("configs") or [] if isinstance(c, dict)]
    mine = next((c for c in configs if c.get("config_name") == target.config), None)
    if mine is None:
        mine = {"config_name": target.config, "data_files": []}
        configs.append(mine)
    files = [f for f in mine.get("data_files") or [] if isinstance(f, dict) and f.get("split") != target.split]
    files.append({"split": target.split, "path": target.shard_pattern})
    mine["data_files"] = sorted(files, key=lambda f: (_SPLIT_ORDER.get(str(f.get("split")), 3), str(f.get("split"))))
    configs.sort(key=lambda c: (c.get("config_name") != "default", str(c.get("config_name"))))
    total = sum(count for count, _ in sections.values())
    languages = list(target.languages) if target.languages is not None else _union(old.get("language"), card.languages)
    categories = (
        list(target.task_categories)
        if target.task_categories is not None
        else _union(old.get("task_categories"), task_categories(card))
    )
    tags = _union(old.get("tags"), ["synthetic", "joydataforge", *method_tags(card.facts), *target.tags])
    ordered: dict[str, Any] = {
        "license": target.license or old.get("license") or "unknown",
        "language": languages,
        "task_categories": categories,
        "size_categories": [size_category(total)],
        "tags": tags,
        "pretty_name": target.pretty_name or old.get("pretty_name") or target.repo_id.rsplit("/", 1)[-1],
        "configs": configs,
    }
    if not languages:
        del ordered["language"]
    for key in ordered:
        meta.pop(key, None)
    info = _other_dataset_info(meta.pop("dataset_info", None), target.config)
    if info:
        meta["dataset_info"] = info
    return {**ordered, **meta}


def _other_dataset_info(info: Any, config: str) -> Any:
    """``dataset_info`` (written by ``datasets.push_to_hub``) less this config's entry: its split sizes would be
    stale after this push, and ``load_dataset`` checks them."""
    entries = info if isinstance(info, list) else [info] if isinstance(info, dict) else []
    kept = [e for e in entries if isinstance(e, dict) and e.get("config_name", "default") != config]
    if not kept:
        return None
    return kept if isinstance(info, list) else kept[0]


def _union(old: Any, new: Iterable[str]) -> list[str]:
    items = [old] if isinstance(old, str) else list(old or [])
    return list(dict.fromkeys([*[str(i) for i in items], *new]))


def _header(card: CardInput, meta: dict[str, Any]) -> str:
    repo = card.target.repo_id
    lines = [_HEADER_BEGIN, f"# {meta.get('pretty_name') or repo}", ""]
    lines.append(
        "Synthetic data made with JoyDataForge: how each split was made (pipeline, models, counts, tokens, cost) "
        "and measured (`joyforge eval`: near-duplicates, Vendi score, entity diversity, labels) is below."
    )
    lines += ["", "```python", "from datasets import load_dataset", ""]
    for config in meta.get("configs") or []:
        name = config.get("config_name")
        for files in config.get("data_files") or []:
            args = f'"{repo}"' + ("" if name == "default" else f', "{name}"') + f', split="{files.get("split")}"'
            lines.append(f"ds = load_dataset({args})")
    lines += ["```", _HEADER_END, ""]
    return "\n".join(lines)


def _section(card: CardInput) -> str:
    from ..evaluate.report import fmt

    target, facts, source = card.target, card.facts, card.source
    title = f"## Split `{target.split}`" + ("" if target.config == "default" else f" of config `{target.config}`")
    rows = sum(s.rows for s in card.shards)
    size = sum(s.bytes for s in card.shards)
    lines = [
        title,
        "",
        f"{fmt(rows)} records in {len(card.shards)} Parquet shard(s), {_bytes(size)} (`{target.shard_pattern}`).",
        "",
    ]
    lines += ["### How it was made", "", *_made_table(card), ""]
    if facts.calls:
        lines += [
            "Model calls behind these records (from each record's `_meta.calls`; cached calls reused an earlier reply):",
            "",
        ]
        lines += [
            "| step | model | model id | calls | cached | prompt tokens | completion tokens |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for (step, model, model_id), stats in facts.calls.items():
            lines.append(
                f"| {_code(step)} | {_code(model)} | {_cell(model_id) or '–'} | {fmt(stats.calls)} | {fmt(stats.cached)} "
                f"| {fmt(stats.prompt_tokens)} | {fmt(stats.completion_tokens)} |"
            )
        lines.append("")
    summary = source.summary or {}
    if summary.get("models"):
        lines += [
            f"What the last `joyforge run` into `{source.run_folder.name if source.run_folder else ''}` spent (its `summary.json`):",
            "",
        ]
        lines += [
            "| model | calls | cache hits | retries | errors | prompt tokens | completion tokens | cost |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, usage in summary["models"].items():
            if not isinstance(usage, dict):
                continue
            lines.append(
                f"| {_code(name)} | {fmt(usage.get('calls'))} | {fmt(usage.get('cache_hits'))} | {fmt(usage.get('retries'))} "
                f"| {fmt(usage.get('errors'))} | {fmt(usage.get('prompt_tokens'))} | {fmt(usage.get('completion_tokens'))} "
                f"| {fmt(usage.get('cost'))} |"
            )
        lines.append("")
    steps = summary.get("steps")
    if isinstance(steps, dict) and any(steps.values()):
        lines += ["Step counters:", "", "| step | counters |", "|---|---|"]
        for name, counters in steps.items():
            if isinstance(counters, dict) and counters:
                shown = ", ".join(f"{_cell(k)} {fmt(v)}" for k, v in counters.items())
                lines.append(f"| {_code(name)} | {shown} |")
        lines.append("")
    lines += ["### Quality (`joyforge eval`)", ""]
    lines += _quality(card)
    lines += ["### Fields", "", "| field | type | records with a value |", "|---|---|---:|"]
    present = (card.metrics or {}).get("fields") or {}
    for name, kind in card.columns:
        lines.append(
            f"| {_code(name)} | {_cell(_short_type(kind))} | {fmt(present.get(name)) if card.metrics else '–'} |"
        )
    return "\n".join(lines) + "\n"


def _made_table(card: CardInput) -> list[str]:
    from ..evaluate.report import fmt

    facts, source = card.facts, card.source
    summary = source.summary or {}
    rows: list[tuple[str, str]] = []
    if facts.pipelines:
        rows.append(("pipeline", ", ".join(_code(p) for p in facts.pipelines)))
    if facts.steps:
        rows.append(("steps", ", ".join(_code(s) for s in facts.steps)))
    if facts.tasks:
        rows.append(("produced by", ", ".join(f"{_code(t)} ({fmt(n)} records)" for t, n in facts.tasks.most_common())))
    if facts.models:
        rows.append(
            ("models", ", ".join(_code(m) + (f" ({_cell(i)})" if i and i != m else "") for m, i in facts.models))
        )
    if facts.inputs:
        rows.append(
            (
                "input",
                ", ".join(_code(name) for name in list(facts.inputs)[:5]) + (" ..." if len(facts.inputs) > 5 else ""),
            )
        )
    totals = summary.get("totals") if isinstance(summary.get("totals"), dict) else None
    if totals:
        rows.append(
            (
                "records",
                f"{fmt(facts.records)} pushed; the run folder holds {fmt(totals.get('ok'))} input records done, "
                f"{fmt(totals.get('filtered'))} filtered out, {fmt(totals.get('failed'))} failed",
            )
        )
    else:
        rows.append(("records", f"{fmt(facts.records)} pushed"))
    if facts.calls:
        rows.append(
            (
                "tokens",
                f"{fmt(facts.prompt_tokens)} prompt + {fmt(facts.completion_tokens)} completion "
                f"in {fmt(sum(s.calls for s in facts.calls.values()))} calls behind these records",
            )
        )
    if summary:
        rows.append(
            (
                "last run",
                f"{fmt(summary.get('tokens'))} tokens, cost {fmt(summary.get('cost'))} (in the currency of the "
                f"models' prices), {fmt(summary.get('cache_hits'))} cache hits, {fmt(summary.get('seconds'))} s, "
                f"exit status {fmt(summary.get('exit_status'))}",
            )
        )
    if card.review_note:
        rows.append(("human review", _cell(card.review_note)))
    if source.fingerprint:
        rows.append(("run fingerprint", _code(source.fingerprint)))
    if not (facts.calls or summary):
        rows.append(("provenance", "none recorded: the records carry no `_meta` and no run folder came with them"))
    return ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


def _quality(card: CardInput) -> list[str]:
    from ..evaluate.report import fmt, pct, summary_pairs

    metrics = card.metrics
    if not metrics:
        return [card.eval_note or "Not measured (`--no-eval`).", ""]
    lines = []
    if card.eval_note:
        lines += [card.eval_note, ""]
    lines += ["| metric | value |", "|---|---:|"]
    lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in summary_pairs(metrics)]
    lines.append("")
    fields = ", ".join(_code(f) for f in metrics.get("text_fields") or [])
    dup = metrics.get("near_duplicates")
    if dup:
        lines.append(
            f"**Near-duplicates** (MinHash over {fields}, Jaccard ≥ {fmt(dup.get('threshold'))}, "
            f"{fmt(dup.get('num_perm'))} permutations, {dup.get('shingle_mode')} shingles): {fmt(dup.get('duplicates'))} "
            f"duplicates ({pct(dup.get('duplicate_ratio'))}) in {fmt(dup.get('clusters'))} clusters, the largest of "
            f"{fmt(dup.get('largest_cluster'))}; {fmt(dup.get('exact_duplicates'))} exact duplicates, "
            f"{fmt(dup.get('empty_texts'))} empty texts."
        )
        lines.append("")
    sem = metrics.get("semantic")
    if sem:
        scores = ", ".join(f"{k.replace('inf', '∞')} {fmt(v)}" for k, v in (sem.get("vendi") or {}).items())
        lines.append(
            f"**Semantic diversity** (Vendi score, cosine kernel over {fmt(sem.get('vectors'))} embeddings of {fields} "
            f"by {_code(str(sem.get('embedder')))}): {scores}; per record {fmt(sem.get('vendi_per_record'))} "
            "(1.0: every record points its own way)."
        )
    else:
        lines.append("**Semantic diversity**: not measured (no embeddings).")
    lines.append("")
    ents = metrics.get("entities")
    if ents:
        stats = ents.get("entities") or {}
        if stats.get("total"):
            top = ", ".join(f"{_cell(name)} ({fmt(count)})" for name, count in (stats.get("top") or [])[:10])
            lines.append(
                f"**Entity diversity** ({_cell(ents.get('source'))}): {fmt(stats.get('unique'))} unique entities in "
                f"{fmt(stats.get('total'))} mentions, entropy {fmt(stats.get('shannon_entropy_nats'))} nats, "
                f"{pct(ents.get('coverage'))} of records have one; most frequent: {top}."
            )
        else:
            lines.append(f"**Entity diversity** ({_cell(ents.get('source'))}): no entities found.")
        lines.append("")
    for name, dist in (metrics.get("labels") or {}).items():
        lines += [
            f"**Label distribution of {_code(name)}** ({fmt(dist.get('unique'))} distinct values in "
            f"{fmt(dist.get('records_with_value'))} records, entropy {fmt(dist.get('shannon_entropy_nats'))} nats):",
            "",
            "| value | records | share |",
            "|---|---:|---:|",
        ]
        total = dist.get("total") or 0
        for value, count in dist.get("top") or []:
            lines.append(f"| {_cell(value)} | {fmt(count)} | {pct(count / total if total else None)} |")
        if dist.get("other"):
            lines.append(f"| (other values) | {fmt(dist['other'])} | {pct(dist['other'] / total if total else None)} |")
        lines.append("")
    lengths = metrics.get("lengths") or {}
    if lengths:
        lines += ["**Lengths**:", "", "| field | unit | median | p90 | max |", "|---|---|---:|---:|---:|"]
        for name, stats in lengths.items():
            if stats.get("count"):
                lines.append(
                    f"| {_code(name)} | {stats.get('unit')} | {fmt(stats.get('median'))} | {fmt(stats.get('p90'))} "
                    f"| {fmt(stats.get('max'))} |"
                )
        lines.append("")
    return lines


def _short_type(kind: str) -> str:
    return kind if len(kind) <= 80 else kind[:77] + "..."


def _cell(value: Any) -> str:
    """A Markdown table cell: no newline, no unescaped pipe."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = _cell(value).replace("`", "'")
    return f"`{text}`"


def _bytes(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    exponent = min(int(math.log10(size) // 3), 4)
    return f"{size / 10 ** (3 * exponent):.1f} {['B', 'kB', 'MB', 'GB', 'TB'][exponent]}"
