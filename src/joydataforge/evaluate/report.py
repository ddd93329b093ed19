"""The HTML report of ``joyforge eval --report``: one self-contained page people actually read.

Why one file with nothing external: reports get mailed, attached to tickets and opened on machines
without internet. So the page inlines its CSS, its charts (SVG drawn by :mod:`.report_charts`) and a
few lines of script (legend toggles on the map), loads no font, script or image from anywhere, and
embeds the metrics JSON itself (``<script type="application/json" id="metrics-data">``) so that the
numbers stay machine-readable. Chinese renders through a font stack that lists the common CJK fonts
of each OS (Noto/Source Han, PingFang, Microsoft YaHei, WenQuanYi).

Every number comes with a plain-language sentence saying what it means and which way is better,
because the audience is whoever builds the dataset, not only whoever wrote the metric.

The 2-D map is a PCA projection (numpy SVD of the centred, unit-length embeddings): linear, exact and
deterministic, so the same data always draws the same map, at the cost of squashing structure that
t-SNE/UMAP would separate. The page says so and gives the variance the two axes explain.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment
from markupsafe import Markup, escape

from ..text.shingles import DEFAULT_MODE, token_spans
from . import report_charts as charts
from .metrics import DatasetEvaluation

TEMPLATE = "report_template.html.j2"
MAX_MAP_POINTS = 3000
CLUSTER_TEXT_CHARS = 800


@dataclass(frozen=True)
class MetricRow:
    """One line of the metrics table: name, formatted value, and what it means."""

    section: str
    name: str
    value: str
    meaning: str


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for people: thousands separators for ints, ``digits`` significant digits for floats."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}g}"
    return str(value)


def inline_code(text: str) -> Markup:
    """Escape ``text`` and show its `backticked` parts as ``<code>``: the metric explanations name commands."""
    escaped = str(escape(text))
    return Markup(re.sub(r"`([^`<>]+)`", r"<code>\1</code>", escaped))


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The first two principal components of the unit-length rows, and the variance share of each.

    Rows are scaled to unit length first so that the map shows the same (cosine) geometry the Vendi
    score measures. Signs are fixed (largest loading positive) so the picture does not flip between runs.
    """
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2)), (0.0, 0.0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:2]
    for row in components:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    points = x @ components.T
    if points.shape[1] < 2:
        points = np.hstack([points, np.zeros((points.shape[0], 2 - points.shape[1]))])
    variance = s**2
    total = float(variance.sum()) or 1.0
    shares = [float(v / total) for v in variance[:2]] + [0.0, 0.0]
    return points, (shares[0], shares[1])


def _group_of(record: dict[str, Any], field: str | None) -> str:
    if field is None:
        return "all records"
    value = record.get(field)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return "(none)" if value in (None, "") else str(value)


def map_colour_field(evaluation: DatasetEvaluation, requested: str | None = None) -> str | None:
    """The field that colours the map: the requested one, else the first label field with single values.

    A list-valued field (``task_label``) colours by its first item, which is only a fallback.
    """
    if requested:
        return requested
    fields = evaluation.label_fields
    for name in fields:
        if not any(isinstance(r.get(name), (list, tuple)) for r in evaluation.records):
            return name
    return fields[0] if fields else None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _top_groups(labels: list[str], keep: int) -> list[str]:
    """The labels with all but the ``keep - 1`` most frequent merged into one "other" group.

    Ten colours are as many as an eye tells apart; a legend of 200 tags helps nobody.
    """
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    if len(counts) <= keep:
        return labels
    top = set(sorted(counts, key=lambda g: (-counts[g], g))[: keep - 1])
    other = f"(other: {len(counts) - len(top)} values)"
    return [label if label in top else other for label in labels]


def embedding_map(
    evaluation: DatasetEvaluation, colour_field: str | None, *, max_points: int = MAX_MAP_POINTS, seed: int = 0
) -> dict[str, Any] | None:
    """The map's SVG, legend and caption facts; a seeded sample of ``max_points`` records when larger."""
    vectors = evaluation.vectors
    if vectors is None or len(vectors) == 0:
        return None
    n = len(vectors)
    index = np.arange(n)
    if n > max_points:
        index = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    points, (var1, var2) = pca_2d(vectors[index])
    labels = [_group_of(evaluation.records[i], colour_field) for i in index]
    tips = [f"#{i + 1} · {g} · {_clip(' '.join(evaluation.texts[i].split()), 140)}" for i, g in zip(index, labels)]
    groups = _top_groups(labels, len(charts.PALETTE))
    colours = charts.group_colours(groups)
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    legend = [{"group": g, "colour": colours[g], "count": counts[g]} for g in colours]
    return {
        "svg": Markup(
            charts.scatter(points, groups, tips, colours, axis_labels=(f"PC1 ({var1:.0%})", f"PC2 ({var2:.0%})"))
        ),
        "legend": legend,
        "field": colour_field,
        "shown": len(index),
        "total": n,
        "variance": (var1, var2),
    }


SHINGLE_WORDS = {
    "mixed": "3-token shingles (a token is a Han character or a word)",
    "word": "3-token shingles (a token is a Han character or a word)",
    "char": "4-character shingles",
    "auto": "word shingles (English) or character shingles (Chinese, 30% Han characters or more)",
}


def shingle_words(near_duplicates: dict[str, Any]) -> str:
    """How the near-duplicate metrics compared texts, in words (older metrics files lack the mode: ``auto``)."""
    return SHINGLE_WORDS.get(str(near_duplicates.get("shingle_mode", "auto")), "shingles")


def metric_rows(metrics: dict[str, Any]) -> list[MetricRow]:
    """The metrics table, each value with a sentence on what it means and which way is better."""
    rows: list[MetricRow] = []
    n = metrics.get("records", 0)
    rows.append(MetricRow("Size", "records", fmt(n), "Records read from the input (bad lines are not counted)."))
    if metrics.get("bad_records"):
        rows.append(
            MetricRow(
                "Size",
                "bad records skipped",
                fmt(metrics["bad_records"]),
                "Lines or rows that could not be read (broken JSON, wrong type) and were left out with "
                "--skip-bad. Run without it to see the first one's file and line.",
            )
        )
    dup = metrics.get("near_duplicates")
    if dup:
        rows += [
            MetricRow(
                "Near-duplicates",
                "near-duplicate records",
                f"{fmt(dup['duplicates'])} ({pct(dup['duplicate_ratio'])})",
                f"Records that are near copies of an earlier record: their {shingle_words(dup)} overlap by an "
                f"estimated Jaccard similarity of at least {dup['threshold']}. `joyforge dedup` would remove them "
                "(every member of a cluster but one). Lower is cleaner; a few percent is common in synthetic data.",
            ),
            MetricRow(
                "Near-duplicates",
                "duplicate clusters",
                fmt(dup["clusters"]),
                f"Groups of records linked by near-duplicate pairs: {fmt(dup.get('records_in_clusters'))} records in "
                f"{fmt(dup['clusters'])} clusters (largest: {fmt(dup['largest_cluster'])} records). "
                "A large cluster usually means one prompt or template produced the same answer many times.",
            ),
            MetricRow(
                "Near-duplicates",
                "exact duplicates",
                fmt(dup["exact_duplicates"]),
                "Records whose text is identical to an earlier one after collapsing whitespace.",
            ),
        ]
    sem = metrics.get("semantic")
    if sem:
        vendi = sem["vendi"]
        rows.append(
            MetricRow(
                "Meaning",
                "Vendi score (q=1)",
                fmt(vendi.get("q=1")),
                f"The effective number of different meanings among the {fmt(sem['vectors'])} records: 1 if "
                "they all say the same thing, the record count if every one is unrelated to the others. "
                "It is exp(Shannon entropy, natural log) of the eigenvalues of the cosine-similarity "
                f"matrix of the embeddings ({sem.get('embedder') or 'embeddings'}, {sem['dim']}-d). Higher is more diverse.",
            )
        )
        if "q=2" in vendi:
            rows.append(
                MetricRow(
                    "Meaning",
                    "Vendi score (q=2)",
                    fmt(vendi["q=2"]),
                    "The same count with more weight on the dominant themes (inverse sum of squared "
                    "eigenvalues); always at most q=1. A big gap to q=1 means many rare themes next to a few big ones.",
                )
            )
        if "q=inf" in vendi:
            rows.append(
                MetricRow(
                    "Meaning",
                    "Vendi score (q=∞)",
                    fmt(vendi["q=inf"]),
                    "The most conservative count: 1 / the largest eigenvalue. Close to 1 means one theme dominates the dataset.",
                )
            )
        rows.append(
            MetricRow(
                "Meaning",
                "Vendi score per record",
                fmt(sem.get("vendi_per_record")),
                "Vendi (q=1) divided by the number of records, for comparing datasets of different sizes: "
                "near 1 every record is its own topic, near 0 most records repeat a few meanings.",
            )
        )
    ents = metrics.get("entities")
    if ents and not ents["entities"]["total"]:
        rows.append(
            MetricRow(
                "Entities",
                "entities",
                "none found",
                f"No entity mentions from {ents.get('source') or 'the records'}. Name the list fields that "
                "hold entities with --entity-fields, or extract them with --entities offline (jieba, "
                "Chinese) or --entities model:NAME (an LLM).",
            )
        )
    elif ents:
        e = ents["entities"]
        rows += [
            MetricRow(
                "Entities",
                "entity mentions / unique entities",
                f"{fmt(e['total'])} / {fmt(e['unique'])}",
                f"Named things (drugs, diseases, people...) the records mention, from {ents.get('source') or 'the records'}. "
                "The same text counts as one entity whatever its type.",
            ),
            MetricRow(
                "Entities",
                "records with entities",
                f"{fmt(ents['records_with_entities'])} ({pct(ents['coverage'])})",
                "Share of records that mention at least one entity.",
            ),
            MetricRow(
                "Entities",
                "entity entropy",
                f"{fmt(e['shannon_entropy_nats'])} nats",
                "Shannon entropy (natural log) of the entity frequencies: 0 if one entity is all there is, "
                "ln(unique) if all are equally frequent. Higher is more varied.",
            ),
            MetricRow(
                "Entities",
                "entity Gini-Simpson",
                fmt(e["gini_simpson"]),
                "1 − Σp²: the chance that two random mentions name different entities. Near 1 is diverse.",
            ),
            MetricRow(
                "Entities",
                "entity inverse Simpson",
                fmt(e["inverse_simpson"]),
                "1 / Σp²: the effective number of equally common entities.",
            ),
            MetricRow(
                "Entities",
                "entity types",
                fmt(ents["types"]["unique"]),
                f"Kinds of entity found; their entropy is {fmt(ents['types']['shannon_entropy_nats'])} nats and "
                "their coverage (share of records with at least one) is in the entities section.",
            ),
        ]
    for name, dist in metrics.get("labels", {}).items():
        rows.append(
            MetricRow(
                "Labels",
                f"{name}: distinct values",
                fmt(dist["unique"]),
                f"Different values of `{name}` ({fmt(dist['records_with_value'])} records have one). "
                f"Entropy {fmt(dist['shannon_entropy_nats'])} nats, inverse Simpson {fmt(dist['inverse_simpson'])} "
                "(the effective number of equally common values): a low value next to many distinct ones "
                "means a few labels dominate.",
            )
        )
    for name, stats in metrics.get("lengths", {}).items():
        if stats.get("count"):
            advice = (
                "Records without earlier turns are single-turn; a dataset meant to teach dialogue needs many with."
                if stats.get("unit") == "turns"
                else "Very short texts are often truncated or empty generations; a long tail may exceed the training context."
            )
            rows.append(
                MetricRow(
                    "Lengths",
                    f"{name} ({stats.get('unit', 'chars')})",
                    f"median {fmt(stats['median'])}, p90 {fmt(stats['p90'])}",
                    f"Over {fmt(stats['count'])} records: min {fmt(stats['min'])}, mean {fmt(stats['mean'])}, "
                    f"max {fmt(stats['max'])}. {advice}",
                )
            )
    return rows


def diff_segments(base: str, text: str, mode: str = DEFAULT_MODE) -> list[tuple[str, str]]:
    """``text`` cut into ``(piece, kind)`` segments against ``base``, so the report can mark what changed.

    ``kind`` is ``same``, ``changed`` (a token of ``text`` that ``base`` lacks) or ``gone`` (``piece`` is text
    of ``base`` missing here). Near-duplicates differ in a word or two; pointing at those saves the reader
    a game of spot-the-difference. The comparison is made on dedup's own tokens in their normal form
    (:func:`~joydataforge.text.shingles.token_spans`, for the shingle ``mode`` the clusters were found
    with), so what dedup ignores -- case, full-width forms, punctuation, spacing -- is never marked.
    """
    base_spans = token_spans(base, mode)  # type: ignore[arg-type]  # the mode the evaluation validated
    spans = token_spans(text, mode)  # type: ignore[arg-type]
    matcher = difflib.SequenceMatcher(None, [k for *_, k in base_spans], [k for *_, k in spans], autojunk=False)
    changed = [False] * len(spans)
    gone: dict[int, str] = {}  # token index of ``text`` -> base text missing just before it
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "insert"):
            changed[j1:j2] = [True] * (j2 - j1)
        elif tag == "delete":
            gone[j1] = base[base_spans[i1][0] : base_spans[i2 - 1][1]]
    segments: list[tuple[str, str]] = []

    def add(piece: str, kind: str) -> None:
        if not piece:
            return
        if segments and segments[-1][1] == kind and kind != "gone":
            segments[-1] = (segments[-1][0] + piece, kind)
        else:
            segments.append((piece, kind))

    position = 0
    for j, (start, end, _) in enumerate(spans):
        between = "changed" if changed[j] and j > 0 and changed[j - 1] else "same"
        add(text[position:start], between)  # separators count as changed only inside a changed stretch
        if j in gone:
            add(gone[j], "gone")
        add(text[start:end], "changed" if changed[j] else "same")
        position = end
    add(text[position:], "same")
    if len(spans) in gone:
        add(gone[len(spans)], "gone")
    return segments


def same_tokens(base: str, text: str, mode: str = DEFAULT_MODE) -> bool:
    """Whether the two texts differ only in what dedup ignores (case, punctuation, spacing, width)."""
    return [k for *_, k in token_spans(base, mode)] == [k for *_, k in token_spans(text, mode)]  # type: ignore[arg-type]


def duplicate_clusters(evaluation: DatasetEvaluation, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` largest clusters with their members' texts, the kept (earliest) record first.

    Each duplicate's text comes as segments with the parts that differ from the kept record marked.
    """
    mode = (evaluation.metrics.get("near_duplicates") or {}).get("shingle_mode", DEFAULT_MODE)
    out = []
    for members in evaluation.clusters[:limit]:
        items = []
        kept_text = _clip(evaluation.texts[members[0]], CLUSTER_TEXT_CHARS)
        for rank, i in enumerate(members):
            record = evaluation.records[i]
            text = evaluation.texts[i]
            shown = _clip(text, CLUSTER_TEXT_CHARS)
            segments = [(shown, "same")] if rank == 0 else diff_segments(kept_text, shown, mode)
            identical = rank > 0 and text == evaluation.texts[members[0]]
            items.append(
                {
                    "row": i + 1,
                    "identical": identical,
                    "normalised_copy": rank > 0
                    and not identical
                    and same_tokens(evaluation.texts[members[0]], text, mode),
                    "id": record.get("id"),
                    "kept": rank == 0,
                    "segments": segments,
                    "clipped": len(text) > CLUSTER_TEXT_CHARS,
                    "chars": len(text),
                }
            )
        out.append({"size": len(members), "members": items})
    return out


def _label_charts(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    charts_out = []
    for name, dist in metrics.get("labels", {}).items():
        items = [(value, count) for value, count in dist["top"]]
        if dist.get("other"):
            items.append((f"(other {fmt(dist['unique'] - len(dist['top']))} values)", dist["other"]))
        charts_out.append(
            {"field": name, "dist": dist, "svg": Markup(charts.bar_chart(items, label=f"{name} distribution"))}
        )
    return charts_out


def _length_charts(evaluation: DatasetEvaluation) -> list[dict[str, Any]]:
    out = []
    for name, values in evaluation.lengths.items():
        if not values or max(values) == 0:
            continue
        stats = evaluation.metrics["lengths"][name]
        label = f"{name} ({stats['unit']})"
        out.append({"name": label, "stats": stats, "svg": Markup(charts.histogram(values, label=label))})
    return out


def _entity_charts(metrics: dict[str, Any]) -> dict[str, Any] | None:
    ents = metrics.get("entities")
    if not ents or not ents["entities"]["total"]:
        return None
    per_type = []
    for etype, stats in sorted(ents["per_type"].items(), key=lambda kv: (-kv[1]["total"], kv[0])):
        per_type.append(
            {
                "type": etype,
                "stats": stats,
                "svg": Markup(
                    charts.bar_chart(
                        [(t, c) for t, c in stats["top"][:10]], label=f"{etype} entities", colour="#59a14f"
                    )
                ),
            }
        )
    return {
        "types_svg": Markup(
            charts.bar_chart([(t, c) for t, c in ents["types"]["top"]], label="entity types", colour="#f28e2b")
        ),
        "top_svg": Markup(
            charts.bar_chart([(t, c) for t, c in ents["entities"]["top"]], label="entities", colour="#59a14f")
        ),
        "per_type": per_type,
    }


def render_report(
    evaluation: DatasetEvaluation,
    *,
    title: str,
    source: str | None = None,
    colour_field: str | None = None,
    top_clusters: int = 10,
    max_map_points: int = MAX_MAP_POINTS,
    generated: _dt.datetime | None = None,
) -> str:
    """The report page as one HTML string."""
    metrics = evaluation.metrics
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["pct"] = pct
    env.filters["code"] = inline_code
    template = env.from_string(resources.files(__package__).joinpath(TEMPLATE).read_text("utf-8"))
    field = map_colour_field(evaluation, colour_field)
    metrics_json = json.dumps(metrics, ensure_ascii=False, indent=1)
    return template.render(
        title=title,
        source=source,
        generated=(generated or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        metrics=metrics,
        rows=metric_rows(metrics),
        lengths=_length_charts(evaluation),
        labels=_label_charts(metrics),
        clusters=duplicate_clusters(evaluation, top_clusters),
        shingle_words=shingle_words(metrics.get("near_duplicates") or {}),
        entities=_entity_charts(metrics),
        map=embedding_map(evaluation, field, max_points=max_map_points),
        metrics_json=metrics_json,  # escaped by the template in <pre>
        metrics_script=Markup(metrics_json.replace("<", "\\u003c")),  # "<" only occurs inside JSON strings
    )


def write_report(path: str | Path, evaluation: DatasetEvaluation, **options: Any) -> Path:
    """Render and write the report (UTF-8), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(evaluation, **options), encoding="utf-8")
    return path


def summary_pairs(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers as (name, value) pairs, for terminal tables and side-by-side comparisons."""
    pairs: list[tuple[str, str]] = [("records", fmt(metrics.get("records")))]
    dup = metrics.get("near_duplicates")
    if dup:
        pairs.append(("near-duplicates", f"{fmt(dup['duplicates'])} ({pct(dup['duplicate_ratio'])})"))
        pairs.append(("duplicate clusters", fmt(dup["clusters"])))
    sem = metrics.get("semantic")
    if sem:
        for key, value in sem["vendi"].items():
            pairs.append((f"Vendi {key.replace('inf', '∞')}", fmt(value)))
        pairs.append(("Vendi per record", fmt(sem.get("vendi_per_record"))))
    ents = metrics.get("entities")
    if ents and not ents["entities"]["total"]:
        pairs.append(("entities", "none found"))
    elif ents:
        pairs.append(("unique entities", fmt(ents["entities"]["unique"])))
        pairs.append(("entity entropy (nats)", fmt(ents["entities"]["shannon_entropy_nats"])))
        pairs.append(("records with entities", pct(ents["coverage"])))
    for name, dist in metrics.get("labels", {}).items():
        pairs.append((f"{name}: distinct", fmt(dist["unique"])))
    for name, stats in metrics.get("lengths", {}).items():
        if stats.get("count"):
            pairs.append((f"{name} median ({stats.get('unit', 'chars')})", fmt(stats["median"])))
    return pairs
