"""torchvision's ImageFolder over every image below a folder (recursive), one class per top-level subfolder."""

from __future__ import annotations

import os
from typing import Any

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

ROOT_CLASS = "."  # the class of images lying directly in the root folder


def image_files(root: str) -> list[str]:
    """Every file with an image extension below `root` (following links), sorted, so all ranks index alike."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        found += [os.path.join(folder, f) for f in files if has_file_allowed_extension(f, IMG_EXTENSIONS)]
    return sorted(found)


def top_folder(root: str, path: str) -> str:
    relative = os.path.relpath(path, root)
    return relative.split(os.sep)[0] if os.sep in relative else ROOT_CLASS


class FolderImages(ImageFolder):
    """ImageFolder (its PIL loader, extensions and `classes`) that also finds images in nested and root folders."""

    def find_classes(self, directory: Any) -> tuple[list[str], dict[str, int]]:
        self._files = image_files(str(directory))
        if not self._files:
            raise FileNotFoundError(f"no image files ({', '.join(IMG_EXTENSIONS)}) anywhere under {directory}")
        classes = sorted({top_folder(str(directory), p) for p in self._files})
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(self, directory: Any, class_to_idx: dict[str, int], *args: Any, **kwargs: Any) -> list:  # type: ignore[override]
        return [(p, class_to_idx[top_folder(str(directory), p)]) for p in self._files]


def sample_path(samples: list[tuple[str, int]], index: int) -> str:
    return samples[index][0]
