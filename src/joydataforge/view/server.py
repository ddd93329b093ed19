"""``joyforge view``'s local web server (aiohttp): a JSON API over the index and three static files.

The page (``static/index.html``, ``app.js``, ``app.css``: plain HTML, CSS and script, no build step) is
served from the package and loads nothing from anywhere else; every response carries a Content Security
Policy that forbids it to, so the viewer works offline and leaks nothing. The server binds to 127.0.0.1
by default and refuses requests whose ``Host`` is not its own address (DNS rebinding), and it accepts
reviews only as JSON posted from its own origin: another web site open in the same browser can neither
read the data nor write a review.

API (all JSON): ``/api/info`` (the dataset, index progress, counts), ``/api/fields``, ``/api/values``,
``/api/records`` (a page: ``f`` filters, ``q`` search, ``offset``, ``limit``, ``sort``, ``desc``, ``cols``),
``/api/record/{rid}`` (the record, its panels, its review, its neighbours in the filtered list),
``POST /api/review/{rid}``, ``/api/summary``, ``/api/eval``; ``/eval/{i}`` serves a saved eval report.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Any

from aiohttp import web

from ..evaluate.report import summary_pairs
from .fields import field_values
from .index import ViewIndex
from .panels import clip, panels_for
from .query import Condition, FilterError, parse_condition
from .review import STATUSES, Review
from .shapes import main_input, main_output

STATIC = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; base-uri 'none'; form-action 'none'"
)
# A saved eval report inlines its styles and scripts; it may run them, and still reach nothing.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
# Columns the records table shows by default, when the records have them (the first four found).
PREFERRED_COLUMNS = (
    "label",
    "vote.outcome",
    "vote.label",
    "score",
    "valid",
    "task_category",
    "input_quality",
    "rewrite_type",
    "dpo.scorer",
    "score_chosen",
    "score_rejected",
    "evol.operation",
    "evol.round",
    "cluster_id",
    "critique.approved",
    "tag",
    "error_type",
    "step",
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
INDEX_KEY = web.AppKey("index", ViewIndex)
OPTIONS_KEY = web.AppKey("options", dict)


def create_app(index: ViewIndex, *, host: str = "127.0.0.1", port: int = 0) -> web.Application:
    """The viewer's application; ``host``/``port`` are what the browser will use (the Host check)."""
    app = web.Application(middlewares=[_guard], client_max_size=64 << 20)
    app[INDEX_KEY] = index
    app[OPTIONS_KEY] = {"host": host, "port": port, "cache": {}}
    app.router.add_get("/", _page)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/info", _info)
    app.router.add_get("/api/fields", _fields)
    app.router.add_get("/api/values", _values)
    app.router.add_get("/api/records", _records)
    app.router.add_get("/api/record/{rid}", _record)
    app.router.add_post("/api/review/{rid}", _review)
    app.router.add_get("/api/summary", _summary)
    app.router.add_get("/api/eval", _eval)
    app.router.add_get("/eval/{number}", _eval_page)
    return app


def set_address(app: web.Application, host: str, port: int) -> None:
    """Tell the Host check the bound address (the port is known once the socket is bound)."""
    app[OPTIONS_KEY]["host"], app[OPTIONS_KEY]["port"] = host, port


# ---------------------------------------------------------------------- guard


def _allowed_hosts(host: str, port: int) -> set[str] | None:
    if host not in LOOPBACK:
        return None  # bound to a public address on purpose (--host): no Host check possible
    return {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    options = request.app[OPTIONS_KEY]
    allowed = _allowed_hosts(options["host"], options["port"])
    if allowed is not None and request.host not in allowed:
        return web.Response(status=403, text="joyforge view answers only on its own address")
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if request.content_type != "application/json":
            return web.json_response({"error": "reviews are posted as JSON"}, status=415)
        if origin is not None and (allowed is not None and origin.split("://", 1)[-1] not in allowed):
            return web.json_response({"error": "reviews are accepted from the viewer's own page only"}, status=403)
    try:
        response = await handler(request)
    except FilterError as exc:
        response = web.json_response({"error": str(exc)}, status=400)
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


# ---------------------------------------------------------------------- static


async def _page(request: web.Request) -> web.Response:
    return _static_file("index.html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return _static_file(name)


def _static_file(name: str) -> web.Response:
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC[name], charset="utf-8")


# ---------------------------------------------------------------------- helpers


def _index(request: web.Request) -> ViewIndex:
    return request.app[INDEX_KEY]


def _conditions(request: web.Request) -> list[Condition]:
    return [parse_condition(text) for text in request.query.getall("f", []) if text.strip()]


def _int(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise FilterError(f"{name} must be a whole number") from None


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False, default=str))


def _review_json(review: Review | None) -> dict[str, Any] | None:
    return review.as_json() if review is not None else None


def _cell(values: dict[str, Any], path: str) -> Any:
    value = values.get(path)
    if isinstance(value, list):
        return ", ".join("" if v is None else str(v) for v in value)
    if isinstance(value, str):
        return clip(value, 80)
    return value


def default_columns(index: ViewIndex) -> list[str]:
    fields = index.fields()
    return [path for path in PREFERRED_COLUMNS if path in fields and fields[path].table][:4]


# ---------------------------------------------------------------------- API


async def _info(request: web.Request) -> web.Response:
    index = _index(request)
    index.refresh_review()
    dataset = index.dataset
    cache = request.app[OPTIONS_KEY]["cache"]
    progress = index.progress
    if not progress.finished:  # counting scans the table: not while the builder writes it, every second
        counts, kinds = {}, {}
    elif "counts" in cache:
        counts, kinds = cache["counts"], cache["kinds"]
    else:
        counts, kinds = cache["counts"], cache["kinds"] = index.counts(), index.kinds()
    stale = progress.finished and dataset.signature() != index.signature
    return _json(
        {
            "title": dataset.title,
            "path": str(dataset.path),
            "run": dataset.run,
            "files": {role: str(path) for role, path in dataset.sources()},
            "review_file": str(dataset.review),
            "has_inputs": dataset.input is not None,
            "progress": progress.as_json(),
            "counts": counts,
            "kinds": kinds,
            "review": index.review.counts(),
            "summary": dataset.summary is not None,
            "reports": len(dataset.reports),
            "columns": default_columns(index),
            "stale": stale,
        }
    )


async def _fields(request: web.Request) -> web.Response:
    return _json({"fields": _index(request).field_menu()})


async def _values(request: web.Request) -> web.Response:
    return _json(_index(request).values(request.query.get("field", "")))


async def _records(request: web.Request) -> web.Response:
    index = _index(request)
    conditions = _conditions(request)
    columns = [c for c in request.query.get("cols", "").split(",") if c.strip()] or default_columns(index)
    page = index.page(
        conditions,
        request.query.get("q", ""),
        offset=_int(request, "offset", 0),
        limit=_int(request, "limit", 50),
        sort=request.query.get("sort") or None,
        descending=request.query.get("desc") == "1",
        count=request.query.get("count", "1") != "0",
    )
    rows = []
    for row, record in page.rows:
        values = field_values(record) if record is not None else {}
        review = index.review_of(row)
        rows.append(
            {
                "rid": row.rid,
                "status": row.status,
                "id": row.id,
                "line": row.line,
                "kinds": list(row.kinds),
                "input": clip(main_input(record), 200) if record else (row.error or ""),
                "output": clip(main_output(record), 200) if record else "",
                "cells": {path: _cell(values, path) for path in columns},
                "review": _review_json(review),
            }
        )
    return _json({"total": page.total, "offset": page.offset, "columns": columns, "rows": rows})


async def _record(request: web.Request) -> web.Response:
    index = _index(request)
    try:
        rid = int(request.match_info["rid"])
    except ValueError:
        raise web.HTTPNotFound() from None
    row = index.row(rid)
    if row is None:
        return _json({"error": f"no record #{rid}"}, status=404)
    record = index.read(row)
    previous, following = index.neighbours(rid, _conditions(request), request.query.get("q", ""))
    body: dict[str, Any] = {
        "rid": row.rid,
        "status": row.status,
        "id": row.id,
        "n": row.n,
        "line": row.line,
        "file": index.file_path(row.fid).name,
        "role": index.file_role(row.fid),
        "kinds": list(row.kinds),
        "error": row.error,
        "record": record,
        "panels": panels_for(row.status, record, index, rid=row.rid),
        "review": _review_json(index.review_of(row)),
        "reviewable": row.status == "kept",
        "previous": previous,
        "next": following,
    }
    if record is None:
        body["raw"] = index.raw(row.fid, row.offset, min(row.length, 100_000)).decode("utf-8", "replace")
    return _json(body)


async def _review(request: web.Request) -> web.Response:
    index = _index(request)
    try:
        rid = int(request.match_info["rid"])
    except ValueError:
        raise web.HTTPNotFound() from None
    row = index.row(rid)
    if row is None:
        return _json({"error": f"no record #{rid}"}, status=404)
    if row.status != "kept":
        return _json({"error": f"only kept records are reviewed; #{rid} is {row.status}"}, status=400)
    try:
        body = await request.json()
    except ValueError:
        return _json({"error": "the body is not JSON"}, status=400)
    if not isinstance(body, dict):
        return _json({"error": "post a JSON object: {status, note, edited}"}, status=400)
    status = body.get("status")
    if status is not None and status not in STATUSES:
        return _json({"error": f"status is one of {', '.join(STATUSES)} or null"}, status=400)
    edited = body.get("edited")
    if edited is not None and not isinstance(edited, dict):
        return _json({"error": "an edited record is a JSON object"}, status=400)
    note = body.get("note") or ""
    if not isinstance(note, str):
        return _json({"error": "a note is text"}, status=400)
    review = await asyncio.to_thread(index.put_review, row, status=status, note=note, edited=edited)
    return _json({"review": _review_json(None if review.empty else review), "counts": index.review.counts()})


async def _summary(request: web.Request) -> web.Response:
    dataset = _index(request).dataset
    if dataset.summary is None or not dataset.summary.exists():
        return _json({"summary": None})
    try:
        summary = json.loads(dataset.summary.read_text("utf-8"))
    except ValueError as exc:
        return _json({"summary": None, "error": f"{dataset.summary.name} is not JSON: {exc}"})
    return _json({"summary": summary})


async def _eval(request: web.Request) -> web.Response:
    reports = []
    for number, report in enumerate(_index(request).dataset.reports):
        try:
            pairs = summary_pairs(report.metrics)
        except (KeyError, TypeError, ValueError):  # metrics of an older or partial eval: show them raw
            pairs = []
        reports.append(
            {
                "number": number,
                "name": report.path.name,
                "html": report.html,
                "pairs": pairs,
                "metrics": report.metrics,
            }
        )
    return _json({"reports": reports})


async def _eval_page(request: web.Request) -> web.Response:
    reports = _index(request).dataset.reports
    try:
        report = reports[int(request.match_info["number"])]
    except (ValueError, IndexError):
        raise web.HTTPNotFound() from None
    if not report.html:
        raise web.HTTPNotFound()
    response = web.Response(body=report.path.read_bytes(), content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


async def serve(
    index: ViewIndex, host: str = "127.0.0.1", port: int = 0, *, ready: Any = None, stop: asyncio.Event | None = None
) -> None:
    """Serve ``index`` on ``host:port`` until ``stop`` is set (or forever); ``ready(url)`` once listening.

    The index build starts only once the socket is bound, so a busy port fails at once, not after minutes.
    """
    app = create_app(index, host=host, port=port)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        bound = sockets[0].getsockname()[1] if sockets else port
        set_address(app, host, bound)
        index.start()
        if ready is not None:
            ready(url_of(host, bound))
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


__all__ = ["create_app", "default_columns", "serve", "set_address", "url_of"]
