"""Images: a name in the spec (``image: tiny``) -> the files a host boots from.

An image is either a recipe in ``images/<name>/build.sh`` (built on demand into
``<state_dir>/images/<name>/``, cached: the recipe itself says when it is up to date), or a
path to a qcow2/raw disk image.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from elastic.adapters import render
from elastic.adapters.run import run
from elastic.errors import ConfigError

BUILD_TIMEOUT = 900.0
TINY_CMDLINE = "console=ttyS0 panic=-1 quiet"


@dataclass(frozen=True)
class ImageFiles:
    name: str
    disk: Path                    # base disk (qcow2): nodes get overlays of it
    kernel: Path | None = None    # direct kernel boot when set
    initrd: Path | None = None
    cmdline: str = ""


def recipes_dir() -> Path:
    """images/ of this checkout (or ELASTIC_IMAGES_DIR)."""
    configured = os.environ.get("ELASTIC_IMAGES_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "images"


def known_images() -> list[str]:
    base = recipes_dir()
    return sorted(p.parent.name for p in base.glob("*/build.sh")) if base.is_dir() else []


def check_image(name: str) -> None:
    """ConfigError if ``name`` is neither a recipe nor an existing disk file."""
    if name in known_images() or (("/" in name or name.endswith((".qcow2", ".img", ".raw")))
                                  and Path(name).expanduser().is_file()):
        return
    from elastic.spec.suggest import did_you_mean
    known = known_images()
    raise ConfigError(f"unknown image '{name}'{did_you_mean(name, known)}; images are "
                      f"{', '.join(known) or 'none'} (recipes in {recipes_dir()}) or a path "
                      "to a qcow2 file", key="image")


def cache_dir(state_dir: Path) -> Path:
    """Where built images live: $ELASTIC_IMAGE_CACHE if set (several state dirs, e.g. the
    system tests', share one), else the state dir's images/."""
    shared = os.environ.get("ELASTIC_IMAGE_CACHE")
    return Path(shared) if shared else state_dir / "images"


def build(name: str, cache: Path, progress=None) -> ImageFiles:
    """The image's files, building the recipe first if needed."""
    check_image(name)
    if name not in known_images():
        return ImageFiles(name=name, disk=Path(name).expanduser().resolve())
    out = cache / name
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"image {name}: building (or checking) in {out}")
    # one build at a time per image directory: elastic processes (an autoscaler and an
    # add-workers, or several state dirs sharing ELASTIC_IMAGE_CACHE) may ask at once
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run([str(recipes_dir() / name / "build.sh"), str(out)], timeout=BUILD_TIMEOUT)
    manifest = json.loads((out / "manifest.json").read_text()) if \
        (out / "manifest.json").is_file() else {}
    kernel = render.tiny_kernel(out)
    if kernel is not None:
        return ImageFiles(name=name, disk=out / "disk.qcow2", kernel=kernel,
                          initrd=out / render.TINY_INITRD,
                          cmdline=manifest.get("cmdline", TINY_CMDLINE))
    return ImageFiles(name=name, disk=out / "disk.qcow2")
