"""The pointing game's "difficult" subsets as TorchRay ships them (Nam et al. [Nam-Hedge]; Zhang et al., EBP [Zhang2016-EB]).

``pointing_game_ebp_voc07_difficult.txt`` and ``pointing_game_ebp_coco_difficult.txt`` (TorchRay,
``torchray/benchmark/``) have one tab-separated row per image: the image stem (``000001``,
``COCO_val2014_000000000042``) and one 0/1 flag per class (20 for VOC, 80 for COCO, in the class order of
:mod:`relprop.data.voc` / :mod:`relprop.data.coco`). A pair (image, class) belongs to the difficult subset
when its flag is 1; TorchRay keeps every pair of an image that is not listed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["flagged_classes", "read_difficult_flags"]


def read_difficult_flags(path: str | Path, num_classes: int) -> dict[str, tuple[bool, ...]]:
    """Read a difficult-subset file: image stem -> ``num_classes`` flags.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a row without exactly ``num_classes`` 0/1 flags, or a stem listed twice (names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"difficult-subset list not found at {path}; TorchRay ships it in "
                                "torchray/benchmark/ (https://github.com/facebookresearch/TorchRay)")
    flags: dict[str, tuple[bool, ...]] = {}
    with path.open(encoding="ascii", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not a text list of flags ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) == 1:
            fields = line.split()
        stem, values = fields[0].strip(), [v.strip() for v in fields[1:]]
        if len(values) != num_classes or any(v not in ("0", "1") for v in values):
            raise ValueError(f"{path}, line {number}: expected an image name and {num_classes} tab-separated "
                             f"0/1 flags, got {len(values)} fields")
        if stem in flags:
            raise ValueError(f"{path}, line {number}: image {stem!r} is listed twice")
        flags[stem] = tuple(v == "1" for v in values)
    return flags


def flagged_classes(flags: dict[str, tuple[bool, ...]] | None, key: str) -> frozenset[int] | None:
    """Classes of image ``key`` flagged difficult in ``flags``; None without a list or for an unlisted image."""
    if flags is None or key not in flags:
        return None
    return frozenset(i for i, f in enumerate(flags[key]) if f)
