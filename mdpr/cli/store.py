"""``mdpr store``: operations on a whole feature store (``compact``, ``export``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdpr.cli.app import app, command, console, err_console, print_json
from mdpr.errors import MdprError

store_app = typer.Typer(name="store", help="Operations on a whole feature store.", no_args_is_help=True,
                        rich_markup_mode="rich")
app.add_typer(store_app, name="store")


@command(
    "export",
    app_=store_app,
    flags={"rows_per_file": "--rows-per-file"},
    help="Write a store's rows (row, path, pid, camid, feature) as Parquet files for a vector database.",
    epilog=(
        "Examples:\n\n"
        "  mdpr store export feats.h5 --output feats-parquet/\n\n"
        "Milvus, Qdrant and LanceDB import such folders in bulk. Needs the optional extra: "
        "pip install \"mdpr\\[parquet]\"."
    ),
)
def export(
    gallery: Path = typer.Argument(..., help="Feature store written by `mdpr extract`.", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", show_default=False,
                                          help="Folder to write the Parquet files into (new or empty)."),
    parquet: Optional[Path] = typer.Option(None, "--parquet", hidden=True, help="Old name of --output."),
    rows_per_file: Optional[int] = typer.Option(None, "--rows-per-file", min=1, show_default=False,
                                                help="Rows per Parquet file (default 65536)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a sentence."),
) -> None:
    """Paths are absolute; features are float32 (L2-normalised when the store's are); unknown pid/camid are null."""
    from mdpr.cli.progress import StageProgress
    from mdpr.workflows.store import export_store_parquet

    if output is not None and parquet is not None and output != parquet:
        raise MdprError("--parquet is the old name of --output; pass only one of them.")
    folder = output or parquet
    if folder is None:
        raise MdprError("Say where to write the Parquet files with --output DIR (a new or empty folder).")
    with StageProgress(err_console) as bar:
        result = export_store_parquet(gallery, folder, rows_per_file=rows_per_file, progress=bar)
    if as_json:
        print_json(result.to_json())
    else:
        console.print(f"Wrote {result.rows} rows of {gallery} to {result.files} Parquet file(s) in {result.folder} "
                      f"({result.bytes / 1e6:.1f} MB).", highlight=False, soft_wrap=True)


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
