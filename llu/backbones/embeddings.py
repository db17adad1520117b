"""``embeddings``: the backbone of a dataset of precomputed embeddings (``llu.datasets.embeddings``)
that also stores its class texts' embeddings. There is no model: the class texts are the stored
rows (whatever template made them), 1 / tau is the stored one, and images are never encoded."""
import torch

from .base import ClipBackbone


class EmbeddingsBackbone(ClipBackbone):
    kind = "embeddings"

    def __init__(self, store):
        """``store``: an ``EmbeddingsFile`` with ``text_features``."""
        super().__init__()
        self.store = store
        self.weights_sha256 = self.identity = store.sha256
        self.embed_dim = store.dim
        self.preprocess = None
        self.context_length = 0
        self.register_buffer("logit_scale", torch.tensor(store.inverse_temperature).log())
        self._noted = False

    @property
    def dtype(self):
        return torch.float32

    def class_text_features(self, classnames, templates):
        if not self._noted and templates:
            print(f"Note: class texts are the embeddings stored in {self.store.path} (the templates "
                  f"{templates[:2]}{'...' if len(templates) > 2 else ''} are not used)")
            self._noted = True
        rows = [self.store.classnames.index(name) for name in classnames]
        return self.store.text_features[rows].clone()

    def encode_image(self, images):
        raise RuntimeError("the embeddings backbone has no image encoder: its dataset gives the features")

    def prompt_learning_problem(self):
        return "it has no text tower (the class texts are stored embeddings)"
