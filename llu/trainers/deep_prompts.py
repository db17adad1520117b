"""Deep prompts: learned tokens inside CLIP's frozen text and vision transformers, written once for
MaPLe (``maple.py``) and PromptSRC (``promptsrc.py``).

Text tower. Layer 1 reads the prompt [SOS] P_1 [words] [CLASS] . [EOS] (P_1: the learned context, as
CoOp's); at the input of each layer i = 2..J the outputs at the context positions are discarded and
replaced by that layer's learned tokens P_i (so J - 1 deep prompts). Vision tower (a ViT). The learned
tokens P~_1 are appended after the patch and class tokens once the positional embeddings are added
(before ``ln_pre``); at the input of layers i = 2..J the last tokens are replaced by P~_i. The class
token still gives the image feature. J = 0 in a tower leaves it exactly as CLIP runs it (for the text,
the context P_1 stays). This is the layout of both official implementations (their ``clip/model.py``).

Backbones: OpenAI's CLIP format (``clip.model.CLIP`` with a ViT image tower, ToyCLIP included). OpenCLIP
and Hugging Face towers are refused with one line (their blocks' call conventions differ by version;
not written yet), as is a ResNet image tower (no tokens to prompt).

Training runs the image encoder on every batch (the prompts change the image features), so the feature
cache is not used, neither for training nor for evaluation: ``DeepPromptTrainer`` reads images.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.utils import UserError

from .clip_common import ClipTrainer
from .coop import PromptLearner, PromptTrainer


# ---------------------------------------------------------------------------------------------
# Which backbones, and their towers' sizes

def check_deep_prompts(backbone, trainer_name):
    """One line naming the trainer and backbone when deep prompts cannot run on ``backbone``."""
    problem = backbone.prompt_learning_problem()
    if problem is None and backbone.kind != "openai":
        problem = "deep prompts are written for OpenAI's CLIP format only (ViT-B/16, a CLIP weights file, toy)"
    if problem is None and not hasattr(backbone.model.visual, "transformer"):
        problem = "its image tower is a ResNet, which has no tokens to prompt"
    if problem:
        raise UserError(f"{trainer_name} cannot run on MODEL.BACKBONE.NAME {backbone.backbone_name}: {problem}")


def tower_sizes(backbone):
    """(text layers, text width, vision layers, vision width) of an OpenAI-format CLIP."""
    model = backbone.model
    return (len(model.transformer.resblocks), model.transformer.width,
            len(model.visual.transformer.resblocks), model.visual.transformer.width)


def check_depth(key, depth, layers, tower):
    if not 0 <= depth <= layers:
        raise UserError(f"{key} must be between 0 and the {layers} layers of the {tower} tower, got {depth}")


def normal_prompts(count, n_ctx, width, device):
    """``count`` learned [n_ctx, width] tokens, each N(0, 0.02^2) (as both official codes)."""
    return nn.ParameterList([nn.Parameter(torch.empty(n_ctx, width, device=device).normal_(std=0.02))
                             for _ in range(count)])


# ---------------------------------------------------------------------------------------------
# The towers with deep prompts

def _broadcast(tokens, batch, dtype):
    """[n, W] learned tokens as [n, batch, W] (the towers run sequence-first)."""
    return tokens.to(dtype).unsqueeze(1).expand(-1, batch, -1)


def encode_text_deep(backbone, prompt_embeddings, tokens, deep_prompts):
    """Text features (not normalised) of prompts given as token embeddings [N, L, W] whose context
    sits at positions 1..n; at layer i + 2's input those positions become ``deep_prompts[i]`` [n, W]."""
    model = backbone.model
    dtype = model.dtype
    x = (prompt_embeddings.type(dtype) + model.positional_embedding.type(dtype)).permute(1, 0, 2)  # NLD -> LND
    for layer, block in enumerate(model.transformer.resblocks):
        if 1 <= layer <= len(deep_prompts):
            deep = deep_prompts[layer - 1]
            x = torch.cat([x[:1], _broadcast(deep, x.shape[1], x.dtype), x[1 + deep.shape[0]:]])
        x = block(x)
    x = model.ln_final(x.permute(1, 0, 2)).type(dtype)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection  # pooled at [EOS]


def encode_image_deep(backbone, images, prompts):
    """Image features (not normalised) of a ViT whose token sequence gets ``prompts[0]`` [n, W] appended
    after the positional embeddings, and whose last n tokens become ``prompts[i]`` at layer i + 1's input."""
    visual = backbone.model.visual
    x = visual.conv1(images.type(backbone.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid ** 2, W]
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = x.permute(1, 0, 2)  # NLD -> LND
    if prompts:
        x = torch.cat([x, _broadcast(prompts[0], x.shape[1], x.dtype)])
    x = visual.ln_pre(x)
    for layer, block in enumerate(visual.transformer.resblocks):
        if 1 <= layer < len(prompts):
            x = torch.cat([x[:-prompts[layer].shape[0]], _broadcast(prompts[layer], x.shape[1], x.dtype)])
        x = block(x)
    x = visual.ln_post(x[0])  # the class token
    return x @ visual.proj if visual.proj is not None else x


# ---------------------------------------------------------------------------------------------
# The text context of layer 1, and the model

class LeadingContextLearner(PromptLearner):
    """The prompt "CTX_INIT [CLASS]." whose first ``n_ctx`` tokens are learned (both official codes):
    with "a photo of a" and 2 tokens, P_1 starts as the embeddings of "a photo" and "of a" stays a frozen
    part of the prompt. With no words, or more than 4 tokens (upstream's rule), the prompt is n_ctx "X"s
    and P_1 starts at N(0, 0.02^2). Class-independent, class token at the end."""

    def __init__(self, backbone, classnames, n_ctx, ctx_init):
        nn.Module.__init__(self)
        if n_ctx < 1:
            raise UserError(f"the number of text context tokens must be at least 1, got {n_ctx}")
        words = ctx_init.replace("_", " ").strip()
        device = backbone.text_device
        self.n_ctx, self.csc, self.class_token_position = n_ctx, False, "end"
        if words and n_ctx <= 4:
            if backbone.token_count(words) < n_ctx:
                raise UserError(f"CTX_INIT {ctx_init!r} has fewer than the {n_ctx} context tokens asked for")
            with torch.no_grad():
                ctx = backbone.token_embedding(backbone.tokenize([words]).to(device))[0, 1:1 + n_ctx].float()
            self.prompt_prefix = words
        else:
            ctx = torch.empty(n_ctx, backbone.context_dim, device=device).normal_(std=0.02)
            self.prompt_prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        print(f'Initial text context: "{self.prompt_prefix}", its first {n_ctx} tokens learned')
        self.set_classnames(backbone, classnames)

    def deep_text_prompts(self):
        """P_2..P_J of the text tower."""
        return []

    def vision_prompts(self):
        """P~_1..P~_J of the vision tower."""
        return []


class DeepPromptCLIP(nn.Module):
    """Frozen CLIP running a deep-prompt learner's tokens in both towers; logits tau^-1 cos(g, f)."""

    def __init__(self, backbone, prompt_learner):
        super().__init__()
        self.backbone = backbone
        self.prompt_learner = prompt_learner

    def encode_prompts(self):
        """Unit-norm float32 class-text features under the learned prompts."""
        learner = self.prompt_learner
        features = encode_text_deep(self.backbone, learner(), learner.tokenized_prompts, learner.deep_text_prompts())
        return F.normalize(features.float(), dim=-1)

    def encode_images(self, images):
        """Unit-norm float32 image features under the learned vision prompts."""
        features = encode_image_deep(self.backbone, images, self.prompt_learner.vision_prompts())
        return F.normalize(features.float(), dim=-1)

    def forward(self, images, text_features=None):
        if text_features is None:
            text_features = self.encode_prompts()
        return self.backbone.logit_scale.exp().float() * self.encode_images(images) @ text_features.t()


# ---------------------------------------------------------------------------------------------
# The trainer base

class DeepPromptTrainer(PromptTrainer):
    """What MaPLe and PromptSRC share: images in every training step and every evaluation (never the
    feature cache: the prompts change the image features), class texts encoded once per evaluation
    (they do not depend on the image), checkpoints holding every learned tensor and nothing of the
    classes, so that a model trained on base classes is evaluated on new ones."""

    published_epochs = None  # the published epochs stand whatever the shots
    predicts = False  # the prompts change the image features: llu.load's cached-feature path would be wrong

    def trains_on_features(self):
        return False

    def evaluation_batches(self, split):
        return super(ClipTrainer, self).evaluation_batches(split)  # the engine's: the loaders' images

    @torch.no_grad()
    def _test(self, split):
        self.set_model_mode("eval")
        self.eval_text_features = self.model.encode_prompts()
        try:
            return super()._test(split)
        finally:
            self.eval_text_features = None

    def model_inference(self, images):
        return self.model(images, text_features=getattr(self, "eval_text_features", None))

    def checkpoint_state(self, name):
        return {key: value.detach().clone() for key, value in self._models[name].named_parameters()}

    def upstream_state(self, state_dict):
        """The official code's checkpoint keys as ours (trainers override); others pass through."""
        return state_dict

    def load_checkpoint_state(self, name, state_dict):
        learner = self._models[name]
        state_dict = self.upstream_state(state_dict)
        expected = dict(learner.named_parameters())
        unknown, missing = sorted(set(state_dict) - set(expected)), sorted(set(expected) - set(state_dict))
        if unknown or missing:
            raise UserError(f"the checkpoint does not fit {self.cfg.TRAINER.NAME}'s prompts (missing: "
                            f"{', '.join(missing) or '-'}; unexpected: {', '.join(unknown) or '-'}); was it trained "
                            f"by another trainer, or with another prompt depth?")
        for key, value in state_dict.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise UserError(f"the checkpoint's {key} has shape {tuple(value.shape)}, this run's "
                                f"{tuple(expected[key].shape)}; use the backbone and context sizes it was trained with")
        learner.load_state_dict(state_dict)
