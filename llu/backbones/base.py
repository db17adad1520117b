"""``ClipBackbone``: what the trainers ask of a frozen CLIP, whatever library made it.

A backbone encodes images and tokenised texts into one embedding space, has a learned logit scale
(1 / tau of Eq. 1), and says how its images are preprocessed. Prompt learners (CoOp, CoCoOp,
ProGrad) also need the text tower's token embedding: they run the tower on prompt *embeddings*
(``encode_prompts``), which every kind does the same way: the token embedding's output is replaced
by the prompt embeddings, so the library's own text forward (positions, attention mask, pooling,
projection) runs unchanged.
"""
import contextlib
import hashlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.utils import UserError


@dataclass(frozen=True)
class Preprocess:
    """How the backbone's images are prepared (INPUT.SIZE, PIXEL_MEAN/STD, INTERPOLATION, RESIZE_MODE)."""
    size: tuple
    mean: tuple
    std: tuple
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shortest side to size, then center crop; "squash": resize to size


CLIP_PREPROCESS = Preprocess((224, 224), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def class_prompts(classnames, template):
    """One prompt per class: ``template`` ('a photo of a {}.') around the name, '_' read as a space."""
    return [template.format(name.replace("_", " ")) for name in classnames]


def combined_sha256(*parts):
    """A sha256 over several strings (a backbone's kind, architecture and weights hash)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class ClipBackbone(nn.Module):
    """A frozen CLIP. Subclasses set the attributes below and implement the encoders and tokeniser.

    - ``kind``: "openai", "openclip", "hf" or "embeddings"; ``backbone_name``: MODEL.BACKBONE.NAME;
    - ``weights_sha256``: the weights file's sha256 (results.json's provenance); ``identity``: what the
      feature cache is keyed by (the weights and whatever else decides the features);
    - ``embed_dim``, ``context_length``, ``preprocess`` (None: the backbone sees no images);
    - ``logit_scale``: log(1 / tau); ``logit_bias``: SigLIP's bias, or None.
    """

    kind = ""

    def __init__(self):
        super().__init__()
        self.backbone_name = ""
        self.weights_sha256 = ""
        self.identity = ""

    @property
    def logit_bias(self):
        """SigLIP's bias of its pair scores, or None."""
        return None

    @property
    def weights_id(self):
        return self.weights_sha256[:16]

    @property
    def dtype(self):
        """The dtype images are given in (the image tower's)."""
        raise NotImplementedError

    def freeze(self, device):
        self.to(device).eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    # Images

    def encode_image(self, images):
        raise NotImplementedError

    def encode_images(self, images):
        """Unit-norm float32 features of a batch of preprocessed images."""
        return F.normalize(self.encode_image(images.type(self.dtype)).float(), dim=-1)

    # Texts

    def tokenize(self, texts):
        """Token ids [N, context_length]; a text that does not fit is a UserError."""
        raise NotImplementedError

    def token_count(self, text):
        """How many tokens ``text`` takes without the start and end tokens."""
        raise NotImplementedError

    def encode_text(self, tokens):
        raise NotImplementedError

    @torch.no_grad()
    def encode_texts(self, texts):
        """Unit-norm float32 features of a list of strings."""
        tokens = self.tokenize(texts).to(self.text_device)
        return F.normalize(self.encode_text(tokens).float(), dim=-1)

    def class_text_features(self, classnames, templates):
        """Unit-norm features of the classes from templates such as 'a photo of a {}.': one template's
        features as they are, several templates' renormalised mean (prompt ensembling)."""
        per_template = [self.encode_texts(class_prompts(classnames, t)) for t in templates]
        if len(per_template) == 1:
            return per_template[0]
        return F.normalize(sum(per_template) / len(per_template), dim=-1)

    @property
    def text_device(self):
        return self.logit_scale.device

    # Prompt learning (CoOp, CoCoOp, ProGrad)

    @property
    def token_embedding(self):
        """The text tower's nn.Embedding (prompt learners embed their fixed tokens with it)."""
        raise NotImplementedError

    def prompt_learning_problem(self):
        """Why learned prompts cannot run on this backbone, or None when they can. They need CLIP's
        BPE tokeniser (a start token at position 0, the text, an end token) and its token embedding."""
        return None

    def check_prompt_learning(self):
        problem = self.prompt_learning_problem()
        if problem:
            raise UserError(f"prompt learners (CoOp, CoCoOp, ProGrad) cannot run on MODEL.BACKBONE.NAME "
                            f"{self.backbone_name}: {problem}; use an embedding trainer (LLU, CLIP_Adapter, "
                            f"TipAdapter, ZeroshotCLIP) or a CLIP text tower")

    @property
    def context_dim(self):
        return self.token_embedding.embedding_dim

    def encode_prompts(self, prompt_embeddings, tokens):
        """Text features of prompts given as token embeddings [N, L, width] (the positions of
        ``tokens`` [N, L] decide the pooling); gradients flow into ``prompt_embeddings``."""
        with self.replaced_token_embeddings(prompt_embeddings):
            return self.encode_text(tokens)

    @contextlib.contextmanager
    def replaced_token_embeddings(self, embeddings):
        handle = self.token_embedding.register_forward_hook(lambda module, args, output: embeddings.to(output.dtype))
        try:
            yield
        finally:
            handle.remove()
