"""The built-in world: generated datasets (Shapes, ShapesSketch, ShapesNoisy, Patterns) and ToyCLIP,
a small CLIP pretrained on them, so that every trainer runs end to end without downloads.

- ``render``: drawing one image of a class in a domain;
- ``generate``: ``ensure_dataset(root, name)`` writes a dataset in CoOp's layout;
- ``readers``: the registered dataset classes (importing this package registers them);
- ``toyclip``: ToyCLIP, a small CLIP pretrained on the world; ``weights_file()`` is its shipped weights.
"""
from . import readers  # noqa: F401
