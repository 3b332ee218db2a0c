"""``mdpr visualize-attention``: the Soft Content Branch's attention maps over the input images."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from mdpr.cli.app import command, console, print_json
from mdpr.errors import MdprError


@command(
    "visualize-attention",
    help="Overlay the Soft Content Branch's attention maps (layer4 and layer3) on images.",
    epilog=(
        "Examples:\n\n"
        "  mdpr visualize-attention probe.jpg --weights runs/demo/last.pt --out attention/\n\n"
        "  mdpr visualize-attention crops/*.jpg --weights DukeMTMC-reID.pth --out attention/ --height 384\n\n"
        "One PNG per image: the input, then each attention map of layer4 and layer3 as a heat map "
        "(softmax over the attention channels and the background channel; background not shown)."
    ),
)
def visualize_attention(
    images: List[Path] = typer.Argument(..., help="Image files."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint with a Soft Content Branch."),
    out: Path = typer.Option(Path("attention"), "--out", "-o", help="Folder for the PNG files."),
    height: int = typer.Option(256, "--height", help="Height of each panel in the picture (pixels)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Write one PNG per image with the attention overlays."""
    from mdpr.viz import visualize_attention_files

    if not weights.is_file():
        raise MdprError(f"Checkpoint {weights} does not exist; pass the path of a .pt/.pth file with --weights.")
    if out.exists() and not out.is_dir():
        raise MdprError(f"--out {out} is a file; pass a folder for the PNG files.")
    if height < 32:
        raise MdprError(f"--height {height} is too small; use at least 32 pixels.")
    with console.status("Computing attention maps..."):
        written = visualize_attention_files(images, weights, out, panel_height=height, device=device)
    if as_json:
        print_json({"files": [str(p) for p in written]})
    else:
        for src, dst in zip(images, written):
            console.print(f"{src} -> [bold]{dst}[/]")
