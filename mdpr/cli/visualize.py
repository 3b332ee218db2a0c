"""``mdpr visualize-attention``: the Soft Content Branch's attention maps over the input images."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from mdpr.cli.app import command, console, print_json


@command(
    "visualize-attention",
    flags={"panel_height": "--height"},
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
    images: List[Path] = typer.Argument(..., help="Image files or folders of images."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint with a Soft Content Branch."),
    out: Path = typer.Option(Path("attention"), "--out", "-o", help="Folder for the PNG files."),
    height: int = typer.Option(256, "--height", help="Height of each panel in the picture (pixels)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available, else mps, else cpu), cpu, cuda, cuda:N or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Write one PNG per image with the attention overlays."""
    from mdpr.workflows.visualize import visualize_attention as draw

    with console.status("Computing attention maps..."):
        result = draw(images, weights, out, panel_height=height, device=device)
    if as_json:
        print_json({"files": [str(p) for p in result.files]})
    else:
        for src, dst in zip(result.inputs, result.files):
            console.print(f"{src} -> [bold]{dst}[/]")
