"""Data sets by name (:func:`relprop.data.registry.get_dataset`): ImageNet, ImageNet segmentation, Pascal VOC,
COCO in their on-disk formats, synthetic scenes, and photos shipped with installed packages
(:mod:`relprop.data.photos`; no downloads)."""
