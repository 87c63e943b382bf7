"""Parse annotation XML with a parser that refuses DTDs, entity declarations and external references."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .base import CorruptSampleError

__all__ = ["XmlAnnotation", "XmlObject", "child_number", "child_text", "parse_xml", "read_voc_xml"]


def parse_xml(path: str | Path) -> Element:
    """The root element of the XML file ``path``; any failure is a :class:`CorruptSampleError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptSampleError(str(path), f"cannot read annotation ({err.strerror or err})") from None
    try:
        return SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as err:
        raise CorruptSampleError(str(path), f"XML refused: {type(err).__name__} (DTDs and entities are not "
                                            "accepted)") from None
    except ParseError as err:
        raise CorruptSampleError(str(path), f"malformed XML ({err})") from None


def child_text(node: Element, tag: str, path: str | Path, default: str | None = None) -> str:
    """Stripped text of the child ``tag`` of ``node``; missing without a default is corrupt."""
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise CorruptSampleError(str(path), f"<{node.tag}> has no <{tag}>")
    return child.text.strip()


def child_number(node: Element, tag: str, path: str | Path) -> float:
    """The child ``tag`` of ``node`` read as a finite number (VOC 2012 writes some coordinates as ``"273.5"``).

    ``nan``, ``inf`` and other non-numbers make the sample corrupt.
    """
    text = child_text(node, tag, path)
    try:
        value = float(text)
    except ValueError:
        raise CorruptSampleError(str(path), f"<{tag}> of <{node.tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise CorruptSampleError(str(path), f"<{tag}> of <{node.tag}> is not a finite number: {text!r}")
    return value


class XmlObject(NamedTuple):
    """One ``<object>`` of a Pascal-VOC-style annotation, coordinates as written in the file."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool


class XmlAnnotation(NamedTuple):
    """A Pascal-VOC-style annotation (also used by the ILSVRC bounding boxes)."""

    filename: str
    width: int
    height: int
    objects: list[XmlObject]


def read_voc_xml(path: str | Path) -> XmlAnnotation:
    """Read ``<annotation>`` with ``<size>`` and its ``<object>``s (name, ``<bndbox>``, ``<difficult>``)."""
    root = parse_xml(path)
    if root.tag != "annotation":
        raise CorruptSampleError(str(path), f"root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    if size is None:
        raise CorruptSampleError(str(path), "<annotation> has no <size>")
    width, height = int(child_number(size, "width", path)), int(child_number(size, "height", path))
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            raise CorruptSampleError(str(path), f"<object> {child_text(obj, 'name', path)!r} has no <bndbox>")
        difficult = child_text(obj, "difficult", path, default="0")
        if difficult not in ("0", "1"):
            raise CorruptSampleError(str(path), f"<difficult> must be 0 or 1, got {difficult!r}")
        objects.append(XmlObject(child_text(obj, "name", path), *(child_number(box, t, path) for t in
                                 ("xmin", "ymin", "xmax", "ymax")), difficult == "1"))
    return XmlAnnotation(child_text(root, "filename", path, default=""), width, height, objects)
