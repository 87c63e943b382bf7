"""Photos shipped with scikit-image and matplotlib."""

import pytest

from relprop.data.photos import Photo, default_photo, demo_photos, load_photo, photo_names


def test_photo_names():
    names = photo_names()
    assert names == sorted(names)
    assert {"chelsea", "coffee", "astronaut", "rocket", "motorcycle", "grace_hopper"} <= set(names)


@pytest.mark.parametrize("name", photo_names())
def test_photos_load_as_rgb(name):
    photo = load_photo(name)
    assert isinstance(photo, Photo) and photo.name == name and photo.path.is_file()
    assert photo.description
    image = photo.image()
    assert image.mode == "RGB"
    assert min(image.size) >= 200 and max(image.size) <= 2000


def test_known_sizes():
    assert load_photo("chelsea").image().size == (451, 300)
    assert load_photo("coffee").image().size == (600, 400)


def test_demo_and_default():
    demo = demo_photos()
    assert len(demo) == 4
    assert [p.name for p in demo[:2]] == ["chelsea", "coffee"]
    assert default_photo().name == "chelsea"


def test_unknown_photo():
    with pytest.raises(ValueError, match="no_such_photo") as err:
        load_photo("no_such_photo")
    assert "chelsea" in str(err.value)


def test_missing_file_names_package(tmp_path):
    photo = Photo("ghost", tmp_path / "ghost.png", "not there", package="scikit-image")
    with pytest.raises(FileNotFoundError, match="scikit-image"):
        photo.image()
