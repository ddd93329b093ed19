"""``joyforge view PATH``: browse, filter and review a run folder or a data file in the browser (local, offline)."""

from __future__ import annotations

import asyncio
import errno
import webbrowser

import click

from ..errors import InputError

DEFAULT_PORT = 8765


@click.command("view")
@click.argument("path", type=click.Path())
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but a loopback address lets others on the network read the "
    "data and write reviews.",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False),
    help="The run's input file: shows rewrite parents, each output's input record and dropped records.",
)
@click.option("--reindex", is_flag=True, help="Build the index again even if the data did not change.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
def view_command(path: str, port: int, host: str, input_path: str | None, reindex: bool, open_browser: bool) -> None:
    """Browse PATH (a run folder, or a .jsonl/.parquet/... file) in a local web app.

    \b
    Records in a table with search and filters on any field (labels, scores, vote outcome, step, model,
    kept / failed / dropped); a record page with its lineage (Evol tree, rewrite parent, Magpie sample),
    the vote, DPO pairs with each judge's rationale in both orders, failures with their raw replies, dedup
    clusters with diffs; the run summary and eval report. Accept, reject or edit a record and leave a
    note: the review goes to a sidecar (review.jsonl), never into the data; apply it with
    `joyforge export DATA OUT --reviewed`.

    \b
    joyforge view out/demo
    joyforge view out/rewrite --input examples/wizard_seed.jsonl
    joyforge view data.parquet --port 9000

    The index is built once, in the background (.joyforge-view/ beside the data), and rebuilt when the
    data changes; the first page shows at once.
    """
    from ..view.dataset import open_dataset
    from ..view.index import ViewIndex
    from ..view.server import serve

    dataset = open_dataset(path, input_path=input_path)
    index = ViewIndex(dataset, rebuild=reindex)
    if index.builder is not None:
        click.echo(f"indexing {dataset.title} in the background ({index.path})", err=True)

    def ready(url: str) -> None:
        click.echo(f"joyforge view: {url}  (Ctrl-C to stop)")
        click.echo(f"reviews go to {dataset.review}", err=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.secho(
                f"warning: listening on {host}: anyone who reaches it can read the data and review",
                fg="yellow",
                err=True,
            )
        if open_browser:
            webbrowser.open(url)

    try:
        asyncio.run(serve(index, host, port, ready=ready))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} on {host} is in use: choose another with --port (0: any free port)"
            ) from None
        raise
    finally:
        index.close()
