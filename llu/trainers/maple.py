"""MaPLe: Multi-modal Prompt Learning (Khattak, Rasheed, Maaz, Khan and Khan, CVPR 2023;
github.com/muzairkhattak/multimodal-prompt-learning).

Deep language prompting (Sec. 3.2.1): b learned tokens P_i in the text transformer's first J layers,
P_1 in the prompt "[SOS] P_1 of a [CLASS]." and P_2..P_J replacing the previous layer's outputs at
those positions. Deep vision prompting (Sec. 3.2.2): b tokens P~_i in the image transformer's first J
layers. Vision-language prompt coupling (Sec. 3.2.3): the vision prompts are not free parameters but
projections of the language ones, P~_k = F_k(P_k), one linear layer F_k per depth, so that the two
branches' prompts are learned together. Only the P_k and F_k are trained, by cross-entropy on CLIP's
logits; both encoders stay frozen (the shared machinery is ``deep_prompts.py``).

As upstream: P_1 starts as the embeddings of CTX_INIT's first N_CTX tokens ("a photo" of "a photo of
a"), P_2..P_J at N(0, 0.02^2); every F_k for k >= 2 starts as the same random linear layer (upstream
copies one), F_1 its own. PROMPT_DEPTH 0 (upstream refuses it) leaves the vision tower untouched and
learns only P_1: CoOp with the prompt's first tokens learned, and zero-shot CLIP at initialisation.
"""
import copy

import torch.nn as nn

from llu.engine import CN, config_extension

from . import trainer
from .deep_prompts import DeepPromptCLIP, DeepPromptTrainer, LeadingContextLearner, check_deep_prompts, \
    check_depth, normal_prompts, tower_sizes


@config_extension
def add_maple_config(cfg):
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2  # b, the prompt tokens per layer in each branch (the paper's 2)
    # The prompt's words; P_1 starts as the embeddings of their first N_CTX tokens (upstream's init).
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # J, the layers with prompts in both branches (9 of ViT-B/16's 12)


class MultiModalPromptLearner(LeadingContextLearner):
    """P_1 (``ctx``), P_2..P_J (``compound_prompts_text``) and the coupling functions F_1 (``proj``) and
    F_2..F_J (``compound_prompt_projections``); the names are upstream's, so its checkpoints load."""

    def __init__(self, backbone, classnames, n_ctx, ctx_init, depth):
        check_deep_prompts(backbone, "MaPLe")
        text_layers, text_width, vision_layers, vision_width = tower_sizes(backbone)
        check_depth("TRAINER.MAPLE.PROMPT_DEPTH", depth, min(text_layers, vision_layers), "shallower")
        super().__init__(backbone, classnames, n_ctx, ctx_init)
        device = self.ctx.device
        self.depth = depth
        self.proj = nn.Linear(text_width, vision_width).to(device) if depth else None  # F_1
        self.compound_prompts_text = normal_prompts(max(depth - 1, 0), n_ctx, text_width, device)  # P_2..P_J
        coupling = nn.Linear(text_width, vision_width).to(device)
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(coupling) for _ in range(max(depth - 1, 0))])  # F_2..F_J

    def deep_text_prompts(self):
        return list(self.compound_prompts_text)

    def vision_prompts(self):
        """P~_k = F_k(P_k), k = 1..J (Sec. 3.2.3)."""
        if not self.depth:
            return []
        return [self.proj(self.ctx)] + [couple(prompt) for couple, prompt in
                                        zip(self.compound_prompt_projections, self.compound_prompts_text)]


@trainer
class MaPLe(DeepPromptTrainer):
    table_order = 6
    def build_model(self):
        maple = self.cfg.TRAINER.MAPLE
        learner = MultiModalPromptLearner(self.clip_model, self.classnames, maple.N_CTX, maple.CTX_INIT,
                                          maple.PROMPT_DEPTH)
        self.model = DeepPromptCLIP(self.clip_model, learner).to(self.device)
        self.register_prompt_learner()

    def upstream_state(self, state_dict):
        # The official trainer saves its whole model: the learned tensors under "prompt_learner.", the
        # frozen CLIP and the training classes' token embeddings beside them (dropped).
        if not any(key.startswith("prompt_learner.") for key in state_dict):
            return state_dict
        return {key[len("prompt_learner."):]: value for key, value in state_dict.items()
                if key.startswith("prompt_learner.") and key not in ("prompt_learner.token_prefix",
                                                                     "prompt_learner.token_suffix")}
