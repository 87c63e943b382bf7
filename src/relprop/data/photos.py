"""Real photos that ship inside installed packages (scikit-image, matplotlib, scikit-learn); nothing is
downloaded. Nine of them carry hand-drawn annotations kept in ``photos_annotations.json`` (ImageNet labels,
boxes, object outlines) and form the ``photos`` data set."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["Photo", "default_photo", "demo_photos", "load_photo", "photo_names"]


@dataclass(frozen=True)
class Photo:
    """A photo on disk: ``name``, file ``path``, a short ``description`` and the ``package`` shipping it."""

    name: str
    path: Path
    description: str
    package: str = ""

    def image(self) -> Image.Image:
        """Open the photo as an 8-bit RGB PIL image (:func:`relprop.data._images.open_rgb`)."""
        from ._images import open_rgb

        if not self.path.is_file():
            raise FileNotFoundError(_missing_message(self))
        return open_rgb(self.path)


# name -> (package, file name inside the package's data folder, description)
_PHOTOS: dict[str, tuple[str, str, str]] = {
    "astronaut": ("scikit-image", "astronaut.png", "Portrait of astronaut Eileen Collins"),
    "brick": ("scikit-image", "brick.png", "Brick wall texture (greyscale)"),
    "camera": ("scikit-image", "camera.png", "Man with a camera on a tripod (greyscale)"),
    "chelsea": ("scikit-image", "chelsea.png", "Chelsea the cat, a tabby"),
    "china": ("scikit-learn", "china.jpg", "The Tower of Buddhist Incense of the Summer Palace above Kunming Lake"),
    "coffee": ("scikit-image", "coffee.png", "A cup of espresso on a saucer"),
    "coins": ("scikit-image", "coins.png", "Greek coins (greyscale)"),
    "flower": ("scikit-learn", "flower.jpg", "An orange pompon dahlia"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg", "Portrait of Rear Admiral Grace Hopper in uniform"),
    "grass": ("scikit-image", "grass.png", "Grass texture (greyscale)"),
    "gravel": ("scikit-image", "gravel.png", "Gravel texture (greyscale)"),
    "hubble_deep_field": ("scikit-image", "hubble_deep_field.jpg", "Hubble eXtreme Deep Field"),
    "ihc": ("scikit-image", "ihc.png", "Immunohistochemically stained tissue"),
    "moon": ("scikit-image", "moon.png", "Surface of the moon (greyscale)"),
    "motorcycle": ("scikit-image", "motorcycle_left.png", "A motorcycle (left view of a stereo pair)"),
    "retina": ("scikit-image", "retina.jpg", "Fundus photo of a human retina"),
    "rocket": ("scikit-image", "rocket.jpg", "A Falcon 9 rocket on its launch pad"),
}

# package -> (import name, folder of its sample photos inside the package)
_PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "scikit-image": ("skimage", ("data",)),
    "matplotlib": ("matplotlib", ("mpl-data", "sample_data")),
    "scikit-learn": ("sklearn", ("datasets", "images")),
}

_DEMO = ("chelsea", "coffee", "motorcycle", "rocket")
_DEFAULT = "chelsea"


def _package_dir(package: str) -> Path:
    """Folder holding the sample files of ``package``, located without importing its data modules."""
    module, folder = _PACKAGES[package]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        from .._extras import EXTRAS

        extra = next((e for p, e in EXTRAS.values() if p == package), None)
        hint = f": pip install 'relprop[{extra}]' (or pip install {package})" if extra else f": pip install {package}"
        raise FileNotFoundError(f"package {package!r} is not installed; it ships the sample photos{hint}")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*folder)


def _missing_message(photo: Photo) -> str:
    return f"photo {photo.name!r} not found at {photo.path}; it should be shipped by the {photo.package!r} package"


def photo_names() -> list[str]:
    """Sorted names accepted by :func:`load_photo`."""
    return sorted(_PHOTOS)


def load_photo(name: str) -> Photo:
    """Look up a photo by name.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the package that should ship the file lacks it.
    """
    if name not in _PHOTOS:
        raise ValueError(f"Unknown photo {name!r}; known photos: {', '.join(photo_names())}")
    package, filename, description = _PHOTOS[name]
    try:
        folder = _package_dir(package)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"photo {name!r}: {err}") from None
    photo = Photo(name=name, path=folder / filename, description=description, package=package)
    if not photo.path.is_file():
        raise FileNotFoundError(_missing_message(photo))
    return photo


def demo_photos() -> list[Photo]:
    """Four photos EfficientNet-Lite0 classifies sensibly: cat, espresso, motorcycle (moped), rocket (missile)."""
    return [load_photo(n) for n in _DEMO]


def default_photo() -> Photo:
    """Chelsea the cat."""
    return load_photo(_DEFAULT)
