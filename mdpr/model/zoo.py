"""Named backbone initialisations and the weights cache they live in.

A run's backbone starts from one of (``model.init``, or the ``spec`` given to :func:`resolve_init`):

* ``imagenet``: the ImageNet release of the backbone: IBN-Net's ``resnet{18,34,50,101}_ibn_a`` files for IBN-a
  models (the files fast-reid downloads) and torchvision's ``IMAGENET1K_V1`` files for plain ResNets. Downloaded on
  first use from their direct URL into the cache, checked against the SHA-256 prefix in their file name (torch hub's
  naming convention), then read from the cache, offline;
* ``lup_moco_r50`` / ``lup_moco_r101`` / ``lup_moco_r152``: LUPerson's MoCo ResNets (the official MDPR recipes
  start from ``lup_moco_r101``). LUPerson hosts them on Google Drive, which has no direct download, so they are only
  looked up in the cache; when missing, the message says where to get the file and the path to put it at;
* a path to a weights file (torchvision, IBN-Net, LUPerson, fast-reid or a full MDPR checkpoint);
* ``none``: fast-reid's random initialisation, on purpose.

The cache is torch hub's checkpoint folder, ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``
unless ``TORCH_HOME`` or ``XDG_CACHE_HOME`` say otherwise), shared with torchvision, so a file torchvision already
downloaded is not fetched again. Nothing else in mdpr downloads.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from mdpr.config import ModelConfig
from mdpr.errors import MdprError
from mdpr.fileio import atomic_path, describe_os_error
from mdpr.model.init import check_init_file

#: (url, destination) -> None: writes the file at ``url`` to ``destination`` or raises OSError / URLError
Downloader = Callable[[str, Path], None]

IBN_NET_RELEASE = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
TORCHVISION_MODELS = "https://download.pytorch.org/models/"
LUPERSON_PAGE = "https://github.com/DengpanFu/LUPerson"

#: ImageNet IBN-Net release files by depth (fast-reid's ``model_urls['ibn_{depth}x']``)
IBN_NET_FILES: Dict[int, str] = {
    18: "resnet18_ibn_a-2f571257.pth",
    34: "resnet34_ibn_a-94bc1577.pth",
    50: "resnet50_ibn_a-d9d0bb7b.pth",
    101: "resnet101_ibn_a-59ea0ac6.pth",
}
#: torchvision's ImageNet files by depth (``ResNet{depth}_Weights.IMAGENET1K_V1``)
TORCHVISION_FILES: Dict[int, str] = {
    18: "resnet18-f37072fd.pth",
    34: "resnet34-b627a593.pth",
    50: "resnet50-0676ba61.pth",
    101: "resnet101-63fe2227.pth",
    152: "resnet152-394f9c45.pth",
}
#: LUPerson MoCo files by depth, and the Google Drive page of each (LUPerson README, "Pre-trained Models")
LUPERSON_FILES: Dict[int, Tuple[str, str]] = {
    50: ("lup_moco_r50.pth", "https://drive.google.com/file/d/1pFyAdt9BOZCtzaLiE-W3CsX_kgWABKK6/view"),
    101: ("lup_moco_r101.pth", "https://drive.google.com/file/d/1Ckn0iVtx-IhGQackRECoMR7IVVr4FC5h/view"),
    152: ("lup_moco_r152.pth", "https://drive.google.com/file/d/1nGGatER6--ZTHdcTryhWEqKRKYU-Mrl_/view"),
}

NAMED_INITS = ("imagenet", "lup_moco_r50", "lup_moco_r101", "lup_moco_r152")
NONE = "none"


@dataclass(frozen=True)
class InitFile:
    """One named initialisation's file: where it comes from and how to check it."""

    name: str  #: the named initialisation ("imagenet", "lup_moco_r101")
    filename: str  #: its name in the cache
    description: str  #: "ImageNet IBN-Net ResNet-50-IBN-a", for messages
    url: Optional[str] = None  #: direct download; None when it must be downloaded by hand
    page: str = ""  #: where a person gets it (the releasing project)

    @property
    def sha256_prefix(self) -> Optional[str]:
        """The hex digits after the last '-' of the file name (torch hub's convention), if there are any."""
        stem = self.filename.rsplit(".", 1)[0]
        digest = stem.rsplit("-", 1)[-1] if "-" in stem else ""
        return digest if len(digest) >= 6 and all(c in "0123456789abcdef" for c in digest) else None


@dataclass(frozen=True)
class InitChoice:
    """How a run's backbone starts: :func:`resolve_init`'s answer.

    ``name``: "none", a named initialisation or "file"; ``path``: the file that initialises the backbone (None for
    "none"); ``pretrained_reference``: whether the recipe's reference run starts from a pretrained backbone
    (``reference`` names its initialisation), so that training from scratch can say it will not reach its numbers.
    """

    name: str
    path: Optional[Path]
    pretrained_reference: bool
    reference: str = NONE
    description: str = ""

    @property
    def line(self) -> str:
        """One line for the run's log: which file initialised the backbone."""
        if self.path is None:
            return "Backbone initialised at random (model.init=none)."
        what = f" ({self.name}: {self.description})" if self.description else ""
        return f"Backbone initialised from {self.path}{what}."

    @property
    def warning(self) -> Optional[str]:
        """One warning line when a recipe whose reference run was pretrained trains from scratch, else None."""
        if self.path is None and self.pretrained_reference:
            return (f"Training from a random initialisation (model.init=none): the recipe's reference run starts from "
                    f"{self.reference}, so this run will not reach the paper's numbers.")
        return None

    def apply(self, cfg: ModelConfig) -> None:
        """Record the choice in ``cfg`` (``model.pretrained`` = the file, ``model.init`` = the name or path)."""
        cfg.pretrained = str(self.path) if self.path is not None else None
        cfg.init = str(self.path) if self.name == "file" and self.path is not None else self.name


def weights_cache_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where named initialisations live."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def init_file(name: str, cfg: ModelConfig) -> InitFile:
    """The file of named initialisation ``name`` for the backbone ``cfg`` describes (one sentence if none fits)."""
    if name not in NAMED_INITS:
        raise MdprError(f"Unknown model.init '{name}'; use one of {', '.join(NAMED_INITS)}, none, or a weights file.")
    if cfg.backbone != "resnet":
        raise MdprError(f"model.init={name} exists for the resnet backbone family only, not model.backbone="
                        f"{cfg.backbone}; pass a weights file as model.init or choose model.init=none.")
    arch = f"ResNet-{cfg.depth}{'-IBN-a' if cfg.ibn else ''}"
    if name == "imagenet":
        if cfg.ibn:
            if cfg.depth not in IBN_NET_FILES:
                raise MdprError(f"IBN-Net released no ImageNet {arch} (only depths "
                                f"{', '.join(map(str, IBN_NET_FILES))}); use model.ibn=false for torchvision's "
                                f"ResNet-{cfg.depth}, a weights file as model.init, or model.init=none.")
            filename = IBN_NET_FILES[cfg.depth]
            return InitFile(name, filename, f"ImageNet IBN-Net {arch}", IBN_NET_RELEASE + filename,
                            "https://github.com/XingangPan/IBN-Net")
        if cfg.depth not in TORCHVISION_FILES:
            raise MdprError(f"torchvision has no ImageNet ResNet-{cfg.depth}; use model.init=none or a weights file.")
        filename = TORCHVISION_FILES[cfg.depth]
        return InitFile(name, filename, f"ImageNet torchvision {arch}", TORCHVISION_MODELS + filename,
                        "https://pytorch.org/vision/stable/models.html")
    depth = int(name.rsplit("r", 1)[-1])
    if cfg.depth != depth:
        raise MdprError(f"model.init={name} is a ResNet-{depth} but the model is a {arch} (model.depth={cfg.depth}); "
                        f"set model.depth={depth}, or choose model.init=imagenet or model.init=none.")
    filename, page = LUPERSON_FILES[depth]
    return InitFile(name, filename, f"LUPerson MoCo ResNet-{depth}", None, page)


def urllib_download(url: str, destination: Path) -> None:
    """The default :data:`Downloader`: stream ``url`` to ``destination`` with the standard library."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


#: the downloader :func:`resolve_init` uses when given none (tests replace it; tests never touch the network)
default_downloader: Downloader = urllib_download


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_init_file(file: InitFile, cache: Optional[Path] = None, downloader: Optional[Downloader] = None,
                    note: Optional[Callable[[str], None]] = None) -> Path:
    """The cached path of ``file``, downloading and checking it first if it is not cached yet.

    A failed or corrupt download leaves nothing in the cache and raises one sentence naming the URL and the path.
    """
    folder = cache if cache is not None else weights_cache_dir()
    path = folder / file.filename
    if path.is_file():
        return path
    if file.url is None:
        raise MdprError(f"model.init={file.name} ({file.description}, the official MDPR recipes' initialisation) is "
                        f"not in the weights cache: download {file.filename} from the LUPerson repository "
                        f"({LUPERSON_PAGE}, 'Pre-trained Models': {file.page}) and put it at {path}, or choose "
                        f"model.init=imagenet or model.init=none.")
    if note is not None:
        note(f"Downloading {file.description} from {file.url} to {path} (once; later runs read the cache).")
    download = downloader or default_downloader
    expected = file.sha256_prefix
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            try:
                download(file.url, tmp)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                detail = describe_os_error(reason) if isinstance(reason, OSError) else str(reason)
                raise MdprError(f"Cannot download model.init={file.name} ({file.description}) from {file.url} "
                                f"({detail}); download it by hand and put it at {path}, or choose model.init=none."
                                ) from None
            if expected is not None:
                got = _sha256(tmp)
                if not got.startswith(expected):
                    raise MdprError(f"The file downloaded from {file.url} is corrupt (SHA-256 {got[:12]}..., "
                                    f"expected {expected}...); it was removed, so run again to download it anew "
                                    f"or put a good copy at {path}.")
    except PermissionError as exc:
        raise MdprError(f"Cannot write the weights cache {folder} ({describe_os_error(exc)}); set TORCH_HOME to a "
                        f"writable folder.") from None
    return path


def resolve_init(spec: Optional[str], cfg: ModelConfig, *, cache: Optional[Path] = None,
                 downloader: Optional[Downloader] = None, note: Optional[Callable[[str], None]] = None,
                 verify: bool = True) -> InitChoice:
    """Resolve a run's backbone initialisation to a file.

    ``spec``: the user's choice (a named initialisation, a file or "none"); None keeps the configuration's:
    ``model.pretrained`` if set, else ``model.init`` (the recipe's reference run). ``cache`` defaults to
    :func:`weights_cache_dir`, ``downloader`` to :data:`default_downloader`; ``note`` hears about downloads.
    With ``verify`` a backbone file is checked against the architecture now (one sentence naming the file and what
    the model expects), not after the run has started.
    """
    reference = cfg.init or NONE
    pretrained_reference = reference != NONE
    if spec is not None and cfg.pretrained:
        raise MdprError(f"Both model.pretrained ({cfg.pretrained}) and model.init={spec} choose the backbone "
                        f"initialisation; give only one.")
    chosen = spec if spec is not None else (cfg.pretrained or reference)
    if chosen == NONE:
        return InitChoice(NONE, None, pretrained_reference, reference)
    if chosen in NAMED_INITS:
        file = init_file(chosen, cfg)
        path = fetch_init_file(file, cache, downloader, note)
        choice = InitChoice(chosen, path, pretrained_reference, reference, file.description)
    else:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise MdprError(f"model.init {chosen} is neither a file nor one of {', '.join(NAMED_INITS)} or none; "
                            f"pass an existing weights file or a named initialisation.")
        choice = InitChoice("file", path, pretrained_reference, reference)
    if verify:
        check_init_file(path, cfg)
    return choice
