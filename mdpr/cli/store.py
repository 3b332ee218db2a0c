"""``mdpr store``: operations on a whole feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdpr.cli.app import app, command, console, err_console, print_json

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
        "  mdpr store export feats.h5 --parquet feats-parquet/\n\n"
        "Milvus, Qdrant and LanceDB import such folders in bulk. Needs the optional extra: "
        "pip install \"mdpr\\[parquet]\"."
    ),
)
def export(
    gallery: Path = typer.Argument(..., help="Feature store written by `mdpr extract`.", show_default=False),
    parquet: Path = typer.Option(..., "--parquet", help="Folder to write the Parquet files into (new or empty)."),
    rows_per_file: Optional[int] = typer.Option(None, "--rows-per-file", min=1, show_default=False,
                                                help="Rows per Parquet file (default 65536)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a sentence."),
) -> None:
    """Paths are absolute; features are float32 (L2-normalised when the store's are); unknown pid/camid are null."""
    from mdpr.cli.progress import StageProgress
    from mdpr.workflows.store import export_store_parquet

    with StageProgress(err_console) as bar:
        result = export_store_parquet(gallery, parquet, rows_per_file=rows_per_file, progress=bar)
    if as_json:
        print_json(result.to_json())
    else:
        console.print(f"Wrote {result.rows} rows of {gallery} to {result.files} Parquet file(s) in {result.folder} "
                      f"({result.bytes / 1e6:.1f} MB).", highlight=False, soft_wrap=True)
