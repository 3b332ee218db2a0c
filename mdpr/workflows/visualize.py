"""``mdpr visualize-attention``: the Soft Content Branch's attention maps drawn over images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

from mdpr.errors import MdprError


@dataclass
class AttentionPictures:
    """Which input became which picture."""

    inputs: List[Path]
    files: List[Path]


def visualize_attention(
    images: Sequence[Union[str, Path]],
    weights: Union[str, Path],
    out_dir: Union[str, Path],
    panel_height: int = 256,
    device: str = "auto",
    threads: Optional[int] = None,
    workers: int = 1,
) -> AttentionPictures:
    """Write ``<out_dir>/<image stem>_attention.png`` for every image (files or folders of images).

    The images get the checkpoint's own test preprocessing, so the maps are those the model computes at
    inference time (eval-mode BatchNorm).
    """

    from mdpr.data.images import decode_images
    from mdpr.data.transforms import build_test_transform
    from mdpr.fileio import check_output_folder
    from mdpr.inference import image_files
    from mdpr.model import load_model
    from mdpr.runtime import cpu_threads, resolve_device

    if not 32 <= panel_height <= 4096:
        raise MdprError(f"panel_height must be between 32 and 4096 pixels, got {panel_height}.")
    if not Path(weights).is_file():
        raise MdprError(f"Checkpoint {weights} does not exist; pass the path of a .pt/.pth file.")
    out = check_output_folder(out_dir, "the attention pictures' folder")
    files = image_files(images)
    decoded = decode_images(files, "Image", workers)  # every input is checked before the model loads
    model, config = load_model(weights)
    if getattr(model, "soft_branch", None) is None:
        raise MdprError(f"The model in {weights} has no Soft Content Branch, so it has no attention maps to show.")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    transform = build_test_transform(config.input)
    out.mkdir(parents=True, exist_ok=True)
    with cpu_threads(threads):
        written = _draw_all(model, transform, dev, files, decoded, out, panel_height)
    return AttentionPictures(files, written)


def _draw_all(model: Any, transform: Any, dev: Any, files: List[Path], decoded: List[Any], out: Path,
              panel_height: int) -> List[Path]:
    from PIL import Image

    from mdpr.viz import draw_attention_overlays, save_picture

    written: List[Path] = []
    used_names: set = set()
    for path, img in zip(files, decoded):
        tensor = transform(img).unsqueeze(0).to(dev)
        maps = {k: v[0].float().cpu().numpy() for k, v in model.attention_maps(tensor).items()}
        shown = Image.fromarray(tensor[0].permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy())
        name = f"{path.stem}_attention.png"
        n = 1
        while name in used_names:  # two inputs with the same stem in different folders
            n += 1
            name = f"{path.stem}_{n}_attention.png"
        used_names.add(name)
        target = out / name
        save_picture(draw_attention_overlays(shown, maps, panel_height=panel_height), target)
        written.append(target)
    return written
