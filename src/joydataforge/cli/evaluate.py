"""``joyforge eval``, ``joyforge dedup`` and ``joyforge select``: measure, clean and thin out a dataset.

The three commands share how they read data (any input the readers accept; a bad line stops the
command with its file and line unless ``--skip-bad``), how they name text fields (``--text-field``
repeated or comma-separated), and how they get embeddings (``--embedder``). The measuring is done by
:mod:`joydataforge.evaluate`; this module only parses options, reads, writes and prints.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import InputError
from ..io.readers import iter_records
from ..io.writers import dumps_line
from ..text.shingles import MODES as SHINGLE_MODES
from .terminal import make_console, plain

Record = dict[str, Any]

EMBEDDER_HELP = (
    "Where vectors come from: 'auto' (default: the 'embedding' field when records have one, else the local "
    "model, else none), 'local' (offline multilingual model; 'e5' for multilingual-e5-small), "
    "'precomputed:FIELD' (vectors in each record), 'file:PATH' (.npy/.json/.jsonl, one row per record), "
    "'model:NAME' (an embeddings model of models.yaml, e.g. a vLLM/TEI server), or 'none'."
)


SHINGLE_MODE_HELP = (
    "How texts are cut into shingles: 'mixed' (every Han character and every run of other letters is a token, "
    "the same for every record, so mixed Chinese/English text compares alike), 'word' (the same), 'char' "
    "(every letter a token) or 'auto' (word or char per record by a 30% share of Han characters; the old default)."
)


def shingle_mode_option(command: Any) -> Any:
    """``--shingle-mode``, shared by ``eval`` and ``dedup`` (the step's ``mode`` setting)."""
    return click.option(
        "--shingle-mode",
        "shingle_mode",
        type=click.Choice(SHINGLE_MODES),
        default="mixed",
        show_default=True,
        help=SHINGLE_MODE_HELP,
    )(command)


class BadInput(click.ClickException):
    """A problem with the user's data or options; exit status 2 like the rest of ``joyforge``."""

    exit_code = 2


def _console() -> Console:
    return make_console(stderr=True)


def split_fields(values: Sequence[str] | str | None, default: Sequence[str] = ("input",)) -> tuple[str, ...]:
    """``--text-field input --text-field history`` and ``--fields input,history`` both give ``(input, history)``."""
    if values is None:
        return tuple(default)
    if isinstance(values, str):
        values = [values]
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return tuple(dict.fromkeys(names)) or tuple(default)


def read_dataset(path: str, *, skip_bad: bool, what: str = "DATA") -> tuple[list[Record], list[InputError]]:
    """All records of ``path``; a bad record raises :class:`BadInput` naming file and line, unless ``skip_bad``."""
    records: list[Record] = []
    bad: list[InputError] = []
    try:
        for item in iter_records(path):
            if item.error is not None:
                if not skip_bad:
                    raise BadInput(f"{item.error}\n(fix that record, or pass --skip-bad to leave bad records out)")
                bad.append(item.error)
            elif item.record is not None:
                records.append(item.record)
    except InputError as exc:
        raise BadInput(f"{what}: {exc}") from None
    if bad:
        _console().print(f"[yellow]skipped {len(bad)} bad record(s) of {escape(path)}; first: {escape(str(bad[0]))}[/]")
    return records, bad


def read_references(paths: Sequence[str], *, skip_bad: bool) -> list[Record]:
    """The records of every ``--reference`` (files or folders; an earlier run's folder gives its kept records).

    Read by :mod:`joydataforge.io.reference`, like the ``minhash_dedup`` step's ``reference:`` setting.
    """
    from ..io.reference import read_reference

    try:
        records, bad = read_reference(list(paths), skip_bad=skip_bad)
    except InputError as exc:
        raise BadInput(f"--reference: {exc}\n(fix that record, or pass --skip-bad to leave bad records out)") from None
    if bad:
        _console().print(f"[yellow]skipped {len(bad)} bad reference record(s); first: {escape(str(bad[0]))}[/]")
    return records


def check_fields(records: Sequence[Record], fields: Sequence[str], option: str) -> None:
    """Refuse text fields that no record has: a typo would otherwise measure empty strings."""
    if not records:
        return
    present = {k for r in records for k in r}
    missing = [f for f in fields if f not in present]
    if missing:
        shown = ", ".join(sorted(present)[:25])
        raise BadInput(f"{option}: no record has the field(s) {', '.join(missing)}; the records have: {shown}")


def write_jsonl(path: str | Path, records: Sequence[Record]) -> Path:
    """Write records as UTF-8 JSON lines (Chinese unescaped), atomically: a crash leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            for record in records:
                handle.write(dumps_line(record))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _texts(records: Sequence[Record], fields: Sequence[str]) -> list[str]:
    from ..text.minhash_dedup import record_text

    return [record_text(r, list(fields)) for r in records]


def _registry(models_file: str | None) -> Any:
    from ..models.config import ModelRegistry

    registry = ModelRegistry.load()
    return registry.merged(ModelRegistry.load(models_file)) if models_file else registry


def _local_embedder(name: str, cache: bool) -> Any:
    from ..evaluate.embeddings import CachedEmbedder, default_cache_path, make_embedder

    embedder = make_embedder("default" if name == "local" else name)
    return CachedEmbedder(embedder, default_cache_path()) if cache else embedder


async def _embed_texts(texts: Sequence[str], embedder: Any) -> np.ndarray:
    """Vectors of ``texts`` in order, in batches, with a live count on the terminal."""
    from ..evaluate.embeddings import embed_records

    with _console().status(f"embedding {len(texts):,} texts with {embedder.identity}") as status:

        def progress(done: int) -> None:
            status.update(f"embedding: {done:,}/{len(texts):,} texts with {embedder.identity}")

        # the texts are already built (one text per record), so each goes in as a one-field record
        return await embed_records([{"text": t} for t in texts], embedder, text=("text",), progress=progress)


def _gateway_vectors(texts: Sequence[str], name: str, models_file: str | None, cache: bool) -> tuple[np.ndarray, str]:
    from ..evaluate.embeddings import CachedEmbedder, GatewayEmbedder, default_cache_path
    from ..models.gateway import Gateway

    registry = _registry(models_file)
    registry.get(name)  # an unknown name fails here, with the list of known ones

    async def run() -> np.ndarray:
        gateway = Gateway(registry, cache=None)  # CachedEmbedder caches per text already
        try:
            embedder: Any = GatewayEmbedder(gateway.model(name))
            if cache:
                embedder = CachedEmbedder(embedder, default_cache_path())
            return await _embed_texts(texts, embedder)
        finally:
            await gateway.close()

    return asyncio.run(run()), f"model:{name}"


def resolve_vectors(
    records: Sequence[Record],
    texts: Sequence[str],
    spec: str,
    *,
    models_file: str | None = None,
    cache: bool = True,
    data_path: str | None = None,
) -> tuple[np.ndarray | None, str | None]:
    """Vectors for the records per ``--embedder`` (see :data:`EMBEDDER_HELP`), and a name for them."""
    from ..evaluate.embeddings import load_vectors, vectors_from_records

    spec = spec.strip()
    if spec == "none" or not records:
        return None, None
    try:
        if spec == "auto":
            if all(isinstance(r.get("embedding"), list) for r in records):
                return vectors_from_records(records, "embedding"), "precomputed:embedding"
            try:
                embedder = _local_embedder("local", cache)
                return asyncio.run(_embed_texts(texts, embedder)), embedder.identity
            except ImportError as exc:
                _console().print(f"[yellow]no embeddings, so no Vendi score or map: {exc}[/]")
                return None, None
        if spec.startswith("precomputed:"):
            field = spec.split(":", 1)[1] or "embedding"
            return vectors_from_records(records, field), spec
        if spec.startswith("file:"):
            vectors = load_vectors(spec.split(":", 1)[1])
            if len(vectors) != len(records):
                raise BadInput(f"--embedder {spec}: {len(vectors)} vectors for {len(records)} records of {data_path}")
            return vectors, spec
        if spec.startswith("model:"):
            return _gateway_vectors(texts, spec.split(":", 1)[1], models_file, cache)
        embedder = _local_embedder(spec, cache)
        return asyncio.run(_embed_texts(texts, embedder)), embedder.identity
    except (ValueError, ImportError, OSError) as exc:
        raise BadInput(f"--embedder {spec}: {exc}") from None


def resolve_entities(
    records: Sequence[Record], texts: Sequence[str], spec: str, models_file: str | None
) -> tuple[list[dict[str, list[str]]] | None, str | None]:
    """Entity maps per ``--entities``: ``fields`` (``None``: the metrics read the records' fields), or an extractor."""
    from ..evaluate import entities as ent

    if spec in ("fields", "none"):
        return None, None  # "fields": the metrics read the records' fields; "none": EvalOptions skips entities
    if spec in ("offline", "jieba"):
        extractor: Any = ent.OfflineEntityExtractor() if spec == "offline" else ent.JiebaEntityExtractor()

        async def run_offline() -> list[dict[str, list[str]]]:
            return await ent.extract_entities(texts, extractor)

        try:
            return asyncio.run(run_offline()), extractor.identity
        except ImportError as exc:
            raise BadInput(f"--entities {spec}: {exc}") from None
    if spec.startswith("model:"):
        from ..models.gateway import Gateway

        name = spec.split(":", 1)[1]
        registry = _registry(models_file)
        registry.get(name)

        async def run_llm() -> list[dict[str, list[str]]]:
            gateway = Gateway(registry)
            try:
                return await ent.extract_entities(texts, ent.LLMEntityExtractor(gateway.model(name), name=name))
            finally:
                await gateway.close()

        return asyncio.run(run_llm()), f"LLM extraction with {name}"
    raise BadInput(f"--entities {spec}: use 'fields', 'offline', 'jieba', 'model:NAME' or 'none'")


def _summary_table(title: str, columns: Sequence[tuple[str, dict[str, Any]]]) -> Table:
    from ..evaluate.report import summary_pairs

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(name, justify="right")
    rows: dict[str, list[str]] = {}
    for position, (_, metrics) in enumerate(columns):
        for key, value in summary_pairs(metrics):
            rows.setdefault(key, ["–"] * len(columns))[position] = value
    for key, values in rows.items():
        table.add_row(plain(key), *(plain(v) for v in values))  # field names and labels print as written
    return table


# --- eval ------------------------------------------------------------------------------------------


@click.command("eval")
@click.argument("data", type=click.Path())
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    help="Write the metrics JSON here (default: print it, unless --report is given).",
)
@click.option(
    "--report", "report_path", type=click.Path(dir_okay=False), help="Write a self-contained HTML report here."
)
@click.option(
    "--text-field",
    "text_fields",
    multiple=True,
    help="Field(s) that make a record's text, repeated or comma-separated (default: input).",
)
@click.option("--embedder", default="auto", show_default=True, help=EMBEDDER_HELP)
@click.option(
    "--entity-fields",
    "entity_fields",
    multiple=True,
    help="List fields holding entities, field name = entity type (default: every list-of-strings field "
    "that is not a text or label field).",
)
@click.option(
    "--entities",
    "entities_spec",
    default="fields",
    show_default=True,
    help="Where entities come from: 'fields', 'offline' (jieba for Chinese), 'jieba', 'model:NAME' (LLM), 'none'.",
)
@click.option(
    "--label-field",
    "label_fields",
    multiple=True,
    help="Label/tag fields to count (default: label, tag, task_label, intent... when present).",
)
@click.option(
    "--color-by", "colour_field", help="Field that colours the embedding map (default: the first label field)."
)
@click.option(
    "--threshold",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Jaccard similarity from which two records are near-duplicates.",
)
@click.option(
    "--top-clusters",
    default=10,
    show_default=True,
    type=click.IntRange(0),
    help="Duplicate clusters shown in the report.",
)
@shingle_mode_option
@click.option("--title", help="Report title (default: the data's file name).")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models (for model:NAME).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--skip-bad", is_flag=True, help="Leave out records that cannot be read instead of stopping.")
def eval_command(
    data: str,
    output: str | None,
    report_path: str | None,
    text_fields: tuple[str, ...],
    embedder: str,
    entity_fields: tuple[str, ...],
    entities_spec: str,
    label_fields: tuple[str, ...],
    colour_field: str | None,
    threshold: float,
    top_clusters: int,
    shingle_mode: str,
    title: str | None,
    models_file: str | None,
    no_cache: bool,
    skip_bad: bool,
) -> None:
    """Measure DATA: sizes, lengths, labels, near-duplicates, Vendi score, entity diversity.

    \b
    joyforge eval data.jsonl --report report.html -o metrics.json
    joyforge eval data.jsonl --text-field input,history --embedder precomputed:embedding
    """
    from ..evaluate.report import write_report

    records, bad = read_dataset(data, skip_bad=skip_bad)
    evaluation = measure_records(
        records,
        data=data,
        text_fields=text_fields,
        embedder=embedder,
        entity_fields=entity_fields,
        entities_spec=entities_spec,
        label_fields=label_fields,
        threshold=threshold,
        shingle_mode=shingle_mode,
        models_file=models_file,
        no_cache=no_cache,
        top_clusters=top_clusters,
    )
    evaluation.metrics = {"data": str(data), "bad_records": len(bad), **evaluation.metrics}
    console = _console()
    console.print(_summary_table(f"eval: {Path(data).name}", [("value", evaluation.metrics)]))
    text = json.dumps(evaluation.metrics, ensure_ascii=False, indent=2)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n", encoding="utf-8")
        console.print(f"metrics: {output}")
    if report_path:
        write_report(
            report_path,
            evaluation,
            title=title or f"Dataset report: {Path(data).name}",
            source=str(data),
            colour_field=colour_field,
            top_clusters=top_clusters,
        )
        console.print(f"report: {report_path}")
    if not output and not report_path:
        click.echo(text)


def measure_records(
    records: list[Record],
    *,
    data: str,
    text_fields: tuple[str, ...],
    embedder: str,
    entity_fields: tuple[str, ...],
    entities_spec: str,
    label_fields: tuple[str, ...],
    threshold: float,
    shingle_mode: str,
    models_file: str | None,
    no_cache: bool,
    top_clusters: int = 10,
) -> Any:
    """Every ``joyforge eval`` metric of the records, from the command-line spelling of its options.

    ``joyforge push`` measures what it pushes with this too, so a dataset card's numbers are the ones ``eval`` prints.
    """
    from ..evaluate.metrics import EvalOptions, evaluate_records

    fields = split_fields(text_fields)
    check_fields(records, fields, "--text-field")
    texts = _texts(records, fields)
    vectors, vector_source = resolve_vectors(
        records, texts, embedder, models_file=models_file, cache=not no_cache, data_path=data
    )
    entity_maps, entity_source = resolve_entities(records, texts, entities_spec, models_file)
    options = EvalOptions(
        text_fields=fields,
        threshold=threshold,
        shingle_mode=shingle_mode,
        label_fields=split_fields(label_fields) if label_fields else None,
        entity_fields=() if entities_spec == "none" else (split_fields(entity_fields) if entity_fields else None),
        top_clusters=top_clusters,
    )
    try:
        return evaluate_records(
            records,
            options,
            vectors=vectors,
            embedder=vector_source,
            entity_maps=entity_maps,
            entity_source=entity_source,
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from None


# --- dedup -----------------------------------------------------------------------------------------


@click.command("dedup")
@click.argument("data", type=click.Path())
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where the kept records go (JSONL).",
)
@click.option(
    "--threshold",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Estimated Jaccard similarity from which two records are near-duplicates.",
)
@click.option(
    "--fields", "fields", multiple=True, help="Field(s) to compare, comma-separated or repeated (default: input)."
)
@click.option(
    "--policy",
    type=click.Choice(["first", "longest", "tag"]),
    default="first",
    show_default=True,
    help="Per cluster: keep the first record, keep the longest, or keep all and tag them (cluster_id, duplicate_of).",
)
@click.option(
    "--reference",
    "references",
    multiple=True,
    type=click.Path(),
    help="Earlier data (a file or folder; an earlier run's output folder gives its kept records; repeatable): "
    "records of DATA that duplicate it are removed too.",
)
@click.option(
    "--removed",
    "removed_path",
    type=click.Path(dir_okay=False),
    help="Also write the removed records here, each with duplicate_of and cluster_id.",
)
@click.option("--num-perm", default=128, show_default=True, type=click.IntRange(16), help="MinHash permutations.")
@shingle_mode_option
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Processes for the signatures.")
@click.option("--seed", default=1, show_default=True, type=int, help="Picks the hash functions.")
@click.option("--skip-bad", is_flag=True, help="Leave out records that cannot be read instead of stopping.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: signatures, LSH bands and verification as Ray tasks (the cluster of RAY_ADDRESS, else a "
    "local one); the same result.",
)
def dedup_command(
    data: str,
    output: str,
    threshold: float,
    fields: tuple[str, ...],
    policy: str,
    references: tuple[str, ...],
    removed_path: str | None,
    num_perm: int,
    shingle_mode: str,
    workers: int,
    seed: int,
    skip_bad: bool,
    executor: str,
) -> None:
    """Remove near-duplicate records of DATA (MinHash + LSH) and write the rest to -o.

    \b
    joyforge dedup data.jsonl -o clean.jsonl --fields input,history --threshold 0.8
    joyforge dedup new.jsonl -o fresh.jsonl --reference earlier.jsonl
    """
    from ..text.minhash_dedup import deduplicate

    records, _ = read_dataset(data, skip_bad=skip_bad)
    names = split_fields(fields)
    check_fields(records, names, "--fields")
    reference_records = read_references(references, skip_bad=skip_bad) if references else None
    try:
        result = deduplicate(
            records,
            text_fields=list(names),
            threshold=threshold,
            policy=policy,  # type: ignore[arg-type]
            reference=reference_records,
            workers=workers,
            num_perm=num_perm,
            mode=shingle_mode,  # type: ignore[arg-type]  # one of SHINGLE_MODES
            seed=seed,
            clusterer=_ray_clusterer() if executor == "ray" else None,
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    write_jsonl(output, result.kept)
    if removed_path:
        write_jsonl(removed_path, result.removed)
    stats = result.stats
    table = Table(title=f"dedup: {Path(data).name}", show_header=False, title_justify="left")
    rows = [
        ("records in", stats["records_in"]),
        ("reference records", stats["reference_records"]),
        ("kept", stats["kept"]),
        ("removed", stats["removed"]),
        ("  of which duplicates of reference", stats["removed_as_reference_duplicates"]),
        ("clusters", stats["clusters"]),
        ("largest cluster", stats["largest_cluster"]),
        ("empty texts", stats["empty_texts"]),
        ("threshold / permutations", f"{threshold} / {num_perm} ({stats['bands']} bands x {stats['rows']} rows)"),
        ("shingles", shingle_mode),
        ("time", f"{stats['seconds']:.2f}s ({stats['docs_per_second'] or 0:,.0f} docs/s)"),
    ]
    if policy == "tag":
        rows.insert(3, ("tagged as duplicates", sum(1 for r in result.kept if r.get("duplicate_of") is not None)))
    for label, value in rows:
        table.add_row(plain(label), plain(f"{value:,}" if isinstance(value, int) else str(value)))
    console = _console()
    console.print(table)
    console.print(f"output: {output}" + (f"; removed: {removed_path}" if removed_path else ""), markup=False)


def _ray_clusterer() -> Any:
    from ..engine.ray_dedup import ray_near_duplicate_clusters

    return ray_near_duplicate_clusters


# --- select ----------------------------------------------------------------------------------------


@click.command("select")
@click.argument("data", type=click.Path())
@click.option("-n", "count", required=True, type=click.IntRange(1), help="How many records to select.")
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Where the selection goes (JSONL)."
)
@click.option(
    "--method",
    type=click.Choice(["kcenter", "random"]),
    default="kcenter",
    show_default=True,
    help="k-center greedy (farthest-point traversal on the embeddings) or a seeded random sample.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="First pick (kcenter) or the draw (random).")
@click.option("--text-field", "text_fields", multiple=True, help="Field(s) to embed and measure (default: input).")
@click.option("--embedder", default="auto", show_default=True, help=EMBEDDER_HELP)
@click.option("--entity-fields", "entity_fields", multiple=True, help="List fields holding entities (default: auto).")
@click.option("--label-field", "label_fields", multiple=True, help="Label/tag fields to compare (default: auto).")
@click.option(
    "--keep",
    "keep_path",
    type=click.Path(),
    help="Records selected earlier (any readable file): the new picks are the farthest from them; "
    "they are not written again.",
)
@click.option(
    "--order",
    type=click.Choice(["input", "pick"]),
    default="input",
    show_default=True,
    help="Write the selection in input order, or in the order k-center picked it (most diverse first).",
)
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False), help="Write both metric sets as JSON here.")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models (for model:NAME).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--skip-bad", is_flag=True, help="Leave out records that cannot be read instead of stopping.")
def select_command(
    data: str,
    count: int,
    output: str,
    method: str,
    seed: int,
    text_fields: tuple[str, ...],
    embedder: str,
    entity_fields: tuple[str, ...],
    label_fields: tuple[str, ...],
    keep_path: str | None,
    order: str,
    metrics_path: str | None,
    models_file: str | None,
    no_cache: bool,
    skip_bad: bool,
) -> None:
    """Select -n records of DATA that keep the most diversity, and compare their metrics with the full set's.

    \b
    joyforge select data.jsonl -n 1000 -o subset.jsonl
    joyforge select data.jsonl -n 1000 -o random.jsonl --method random --seed 7
    """
    from ..evaluate.metrics import EvalOptions, evaluate_records
    from ..evaluate.selection import coverage_radius, select

    records, _ = read_dataset(data, skip_bad=skip_bad)
    kept_before = read_dataset(keep_path, skip_bad=skip_bad, what="--keep")[0] if keep_path else []
    fields = split_fields(text_fields)
    check_fields(records, fields, "--text-field")
    n = len(records)
    # earlier picks go after the data, embedded the same way, and count as already selected
    everything = records + kept_before
    texts = _texts(everything, fields)
    all_vectors, vector_source = resolve_vectors(
        everything, texts, embedder, models_file=models_file, cache=not no_cache, data_path=data
    )
    vectors = None if all_vectors is None else all_vectors[:n]
    if method == "kcenter" and all_vectors is None:
        raise BadInput(
            "--method kcenter needs embeddings: choose an --embedder (or install the local model), "
            "or use --method random"
        )
    if count > n:
        _console().print(f"[yellow]-n {count} is more than the {n} records: selecting all of them[/]")
    already = list(range(n, len(everything))) or None
    space = np.zeros((len(everything), 1)) if all_vectors is None else all_vectors
    try:
        picked = select(
            space, count, method="k_center" if method == "kcenter" else "random", seed=seed, already_selected=already
        )
    except ValueError as exc:  # e.g. a zero vector, which has no cosine distance
        raise BadInput(f"--embedder {embedder}: {exc}") from None
    picked = picked[picked < n]  # never the earlier picks themselves
    ordered = [int(i) for i in (picked if order == "pick" else np.sort(picked))]
    write_jsonl(output, [records[i] for i in ordered])

    options = EvalOptions(
        text_fields=fields,
        label_fields=split_fields(label_fields) if label_fields else None,
        entity_fields=split_fields(entity_fields) if entity_fields else None,
    )
    full = evaluate_records(records, options, vectors=vectors, embedder=vector_source).metrics
    subset = evaluate_records(
        [records[i] for i in ordered],
        options,
        vectors=None if vectors is None else vectors[ordered],
        embedder=vector_source,
    ).metrics
    if vectors is not None and ordered:
        radius = coverage_radius(vectors, ordered)
        subset["coverage_radius"] = radius
    console = _console()
    console.print(
        _summary_table(
            f"select ({method}, seed {seed}): {len(ordered):,} of {len(records):,} records",
            [("full set", full), ("selected", subset)],
        )
    )
    if vectors is not None and ordered:
        console.print(
            f"coverage radius (largest cosine distance from a record to its nearest selected one; lower "
            f"covers better): {subset['coverage_radius']:.4f}"
        )
    if metrics_path:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "method": method,
            "seed": seed,
            "selected_rows": [i + 1 for i in ordered],
            "full": full,
            "selected": subset,
        }
        Path(metrics_path).write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    console.print(f"output: {output}")
