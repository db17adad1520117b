"""LLU: few-shot fine-tuning of CLIP without losing its zero-shot ability (Localized Latent Updates,
Ibing, Lim and Kobbelt), beside zero-shot CLIP, CoOp, CoCoOp, ProGrad, CLIP-Adapter and Tip-Adapter.

    from llu import LocalizedLinearAdapter      # the method on any embeddings (torch only)
    model = llu.load("output/run")              # a trained run, an export or a backbone: model.predict(...)

Subpackages: ``llu.engine`` (Dassl's names, built-in or the real Dassl), ``llu.datasets`` (the CoOp
dataset readers, your own image folders, the built-in world's), ``llu.trainers`` (the shared CLIP
module and one file per method), ``llu.world`` (the built-in world: rendering, generation, ToyCLIP),
``llu.utils`` (the project's torch-free utilities). Importing ``llu`` imports none of them.
"""
__version__ = "0.3.0"

_ADAPTER_NAMES = ("LocalizedLinearAdapter", "interpolation_weight", "localized_update", "identity_regularizer")
_CLUSTERING_NAMES = ("cluster_anchors", "complete_linkage")


def __getattr__(name):
    if name in _ADAPTER_NAMES:
        from .trainers import llu_adapter
        return getattr(llu_adapter, name)
    if name == "load":
        from .model import load
        return load
    if name in _CLUSTERING_NAMES:
        from .trainers import clustering
        return getattr(clustering, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
