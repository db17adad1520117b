"""The built-in world: generated datasets (Shapes, ShapesSketch, ShapesNoisy, Patterns) and ToyCLIP,
a small CLIP pretrained on them, so that every trainer runs end to end without downloads.

- ``render``: drawing one image of a class in a domain (NumPy and Pillow only);
- ``generate``: ``ensure_dataset(root, name)`` writes a dataset in CoOp's layout (torch-free);
- ``toyclip``: ToyCLIP's architecture, pretraining and shipped weights (``weights_file()``).

Their readers, registered like every other dataset, are ``llu.datasets.world``.
"""
