"""``mdpr list datasets|runs|stores``: what is registered in MDPR_HOME."""

from __future__ import annotations

from enum import Enum

import typer

from mdpr.cli.app import command, console, note_printer, print_json


class Kind(str, Enum):
    datasets = "datasets"
    runs = "runs"
    stores = "stores"


_COLUMNS = {
    "datasets": [("name", "name"), ("dataset", "kind"), ("train_ids", "train ids"), ("query_images", "query"),
                 ("gallery_images", "gallery"), ("root", "root")],
    "runs": [("date", "date"), ("dataset", "dataset"), ("recipe", "recipe"), ("mAP", "mAP"), ("rank1", "Rank-1"),
             ("model", "model")],
    "stores": [("date", "date"), ("rows", "rows"), ("source", "source"), ("path", "store"), ("weights", "weights")],
}


@command("list", help="List the registered datasets, the trained runs or the written feature stores.",
         epilog="Examples:\n\n  mdpr list datasets\n\n  mdpr list runs --json\n\n  mdpr list stores")
def list_command(
    kind: Kind = typer.Argument(..., help="datasets, runs or stores."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
) -> None:
    """Entries whose files were deleted are shown as missing."""
    from rich.table import Table

    from mdpr.workflows.history import list_entries

    listing = list_entries(kind.value, note=note_printer())
    if json_out:
        print_json({"kind": listing.kind, "entries": listing.entries})
        return
    if not listing.entries:
        console.print(f"No {kind.value} recorded in MDPR_HOME yet.", highlight=False)
        return
    table = Table(title=f"mdpr {kind.value}", title_justify="left")
    for _, title in _COLUMNS[kind.value]:
        table.add_column(title)
    table.add_column("files")
    for entry in listing.entries:
        metrics = entry.get("final_metrics") or {}
        cells = []
        for key, _ in _COLUMNS[kind.value]:
            value = entry.get(key, metrics.get(key, ""))
            cells.append(f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else ""))
        cells.append("[red]missing[/]" if entry.get("missing") else "present")
        table.add_row(*cells)
    console.print(table)
