"""``mdpr visualize-attention``: the Soft Content Branch's attention maps over the input images."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mdpr.cli.app import DEVICE_HELP, THREADS_HELP, command, console, print_json


@command(
    "visualize-attention",
    flags={"panel_height": "--height"},
    help="Overlay the Soft Content Branch's attention maps (layer4 and layer3) on images.",
    epilog=(
        "Examples:\n\n"
        "  mdpr visualize-attention probe.jpg --weights runs/demo/last.pt --output attention/\n\n"
        "  mdpr visualize-attention crops/*.jpg --weights DukeMTMC-reID.pth --output attention/ --height 384\n\n"
        "One PNG per image: the input, then each attention map of layer4 and layer3 as a heat map "
        "(softmax over the attention channels and the background channel; background not shown)."
    ),
)
def visualize_attention(
    images: List[Path] = typer.Argument(..., help="Image files or folders of images."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint with a Soft Content Branch."),
    output: Path = typer.Option(Path("attention"), "--output", "-o", help="Folder for the PNG files."),
    out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Old name of --output."),
    height: int = typer.Option(256, "--height", help="Height of each panel in the picture (pixels)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=1024, show_default=False,
                                          help=THREADS_HELP),
    workers: int = typer.Option(1, "--workers", min=0, help="Parallel image decoders, here threads (0 or 1: "
                                                         "decode in the main thread)."),
    as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Write one PNG per image with the attention overlays."""
    from mdpr.workflows.visualize import visualize_attention as draw

    with console.status("Computing attention maps..."):
        result = draw(images, weights, out or output, panel_height=height, device=device, threads=threads,
                      workers=workers)
    if as_json:
        print_json({"files": [str(p) for p in result.files]})
    else:
        for src, dst in zip(result.inputs, result.files):
            console.print(f"{src} -> [bold]{dst}[/]")
