"""CoCoOp: Conditional Context Optimization (Zhou, Yang, Loy and Liu, "Conditional Prompt Learning
for Vision-Language Models", CVPR 2022).

CoOp's context vectors are shifted per image by a lightweight meta-network h (Linear -> ReLU ->
Linear, hidden width vis_dim / 16) of the image feature: v_m(x) = v_m + pi with pi = h(f(x)),
so every image gets its own prompts t_i(x) = {v_1(x), ..., v_M(x), c_i} and
p(y = i | x) = exp(cos(g(t_i(x)), f(x)) / tau) / sum_j exp(cos(g(t_j(x)), f(x)) / tau).
The contexts and h are trained by cross-entropy; CLIP stays frozen. Because the class texts are
encoded once per image, the published setting trains with batch size 1 for 10 epochs.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from llu.engine import CN, config_extension

from . import trainer
from .coop import CoOpCLIP, PromptLearner, PromptTrainer


@config_extension
def add_cocoop_config(cfg):
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16  # M, the number of context vectors (the published runs use 4)
    # Words initialising the context ("a photo of a"; the context is then that many vectors, as
    # upstream, and N_CTX is not used); "": N_CTX random vectors.
    cfg.TRAINER.COCOOP.CTX_INIT = ""


class CoCoOpPromptLearner(PromptLearner):
    """Shared context vectors (class token at the end) plus the meta-network h, both fp32."""

    def __init__(self, backbone, classnames, n_ctx=16, ctx_init=""):
        super().__init__(backbone, classnames, n_ctx, ctx_init, csc=False, class_token_position="end")
        vis_dim, ctx_dim = backbone.embed_dim, backbone.context_dim
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ])).to(self.ctx.device)

    def forward(self, image_features):
        """Prompt embeddings [B, n_cls, L, D]: one set per image, its context shifted by pi = h(f(x))."""
        shift = self.meta_net(image_features)  # [B, D]
        contexts = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # v_m(x) = v_m + pi, [B, M, D]
        return torch.stack([self.assemble(ctx) for ctx in contexts])


class CoCoOpCLIP(CoOpCLIP):
    """CLIP with instance-conditioned prompts: the class texts are encoded once per image."""

    def forward(self, inputs):
        image_features = self.encode_images(inputs)
        prompts = self.prompt_learner(image_features)
        scale = self.backbone.logit_scale.exp().float()
        return torch.stack([scale * feature @ self.encode_prompts(image_prompts).t()
                            for feature, image_prompts in zip(image_features, prompts)])


@trainer
class CoCoOp(PromptTrainer):
    published_epochs = None  # its config's 10 epochs for any shots, as published (not CoOp's schedule)
    table_order = 3

    def build_model(self):
        cocoop = self.cfg.TRAINER.COCOOP
        prompt_learner = CoCoOpPromptLearner(self.clip_model, self.classnames, cocoop.N_CTX, cocoop.CTX_INIT)
        self.model = CoCoOpCLIP(self.clip_model, prompt_learner).to(self.device)
        self.register_prompt_learner()

    def class_features(self, classnames):
        """The prompts depend on the image: a class set is its names, set into the prompt learner."""
        self.use_classnames(classnames)
        return list(classnames)

    def class_logits(self, image_features, classnames):
        self.use_classnames(classnames)
        return self.model(image_features)
