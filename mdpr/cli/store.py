"""``mdpr store``: feature-store maintenance (``mdpr store compact``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mdpr.cli.app import app, command, console, print_json

store_app = typer.Typer(
    name="store",
    help="Maintain feature stores: merge the segments that appends add.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
app.add_typer(store_app, name="store")


@command(
    "compact",
    app_=store_app,
    help="Merge a store's segments (written by extract --append) into one file.",
    epilog=(
        "Examples:\n\n"
        "  mdpr store compact feats/gallery.h5\n\n"
        "  mdpr store compact feats/gallery.h5 --json\n\n"
        "Appends add a segment file each (in <store>.segments/); reading stays one logical store, but one "
        "file is simpler to copy. Compacting is crash-safe and keeps rows, order and version stamp."
    ),
)
def compact(
    store: Path = typer.Argument(..., help="The feature store (.h5) to compact."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a sentence."),
) -> None:
    """Rewrite the store as one HDF5 file and remove its segment files."""
    from mdpr.workflows.store import compact_store

    with console.status(f"Compacting {store}..."):
        result = compact_store(store)
    if as_json:
        print_json({"store": str(result.store), "rows": result.rows, "segments_before": result.segments_before,
                    "segments_after": result.segments_after, "bytes_before": result.bytes_before,
                    "bytes_after": result.bytes_after, "seconds": round(result.seconds, 3)})
    elif result.changed:
        console.print(f"Compacted {result.store}: {result.rows:,} rows, {result.segments_before} segment(s) -> "
                      f"{result.segments_after} file, {result.bytes_before / 2**20:.1f} MiB -> "
                      f"{result.bytes_after / 2**20:.1f} MiB in {result.seconds:.1f} s.", highlight=False)
    else:
        console.print(f"{result.store} is one file already ({result.rows:,} rows); nothing to do.", highlight=False)
