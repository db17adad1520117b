"""PromptSRC: Prompting with Self-regulating Constraints (Khattak, Wasim, Naseer, Khan, Yang and Khan,
"Self-regulating Prompts: Foundational Model Adaptation without Forgetting", ICCV 2023;
github.com/muzairkhattak/PromptSRC).

Independent deep prompts in both towers (``deep_prompts.py``): N_CTX_TEXT tokens P_1..P_Jt in the text
transformer ("[SOS] P_1 [CLASS]." with P_1 from "a photo of a"), N_CTX_VISION tokens P~_1..P~_Jv in the
image transformer, all learned, with nothing coupling them. Three regulators keep the prompted model
near the frozen one:

- Mutual agreement maximisation (Sec. 3.2.1): with f~_p, g~_p the prompted and f~, g~ the frozen
  unit-norm image and class-text features and y~_p, y~ their logits,
      L_SCL-image = |f~_p - f~|_1,  L_SCL-text = |g~_p - g~|_1  (means over the elements),
      L_SCL-logits = KL(y~ || y~_p)  (summed, divided by batch x classes, as the official code),
      L = L_CE + lambda_1 L_SCL-image + lambda_2 L_SCL-text + L_SCL-logits,  lambda_1 = 10, lambda_2 = 25.
- Textual diversity (Sec. 3.2.3): g~ is the mean of the frozen text encoder's (unnormalised) features
  of the class under 60 of CLIP's ImageNet templates, normalised.
- Gaussian prompt aggregation, GPA (Sec. 3.2.2): after epoch t the prompts P_t are added to a sum with
  weight w_t ~ N(t; mu, sigma^2), normalised over the E epochs; after the last epoch the prompts are
  that sum, P = sum_t w_t P_t, which is what is saved and evaluated.

Inference is the prompted model alone. PROMPT_DEPTH_VISION 0 with PROMPT_DEPTH_TEXT 1 is the text
context alone (zero-shot CLIP at initialisation with "a photo of a").
"""
import math

import torch
import torch.nn.functional as F

from llu.engine import CN, compute_accuracy, config_extension
from llu.utils import UserError

from . import trainer
from .deep_prompts import DeepPromptCLIP, DeepPromptTrainer, LeadingContextLearner, check_deep_prompts, \
    check_depth, normal_prompts, tower_sizes


@config_extension
def add_promptsrc_config(cfg):
    cfg.TRAINER.PROMPTSRC = CN()
    cfg.TRAINER.PROMPTSRC.N_CTX_TEXT = 4  # learned tokens per layer of the text tower
    cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 4  # learned tokens per layer of the image tower
    cfg.TRAINER.PROMPTSRC.CTX_INIT = "a photo of a"  # the prompt's words; P_1 starts as their first tokens
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT = 9  # J_t, text layers with prompts (at least 1: P_1)
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION = 9  # J_v, image layers with prompts (0: none)
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25.0  # lambda_2 of L_SCL-text
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10.0  # lambda_1 of L_SCL-image
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15.0  # mu of GPA's Gaussian over epochs 1..E (base-to-new: 15)
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1.0  # sigma of GPA's Gaussian (base-to-new: 1)


# CLIP's ImageNet templates (OpenAI's Prompt_Engineering_for_ImageNet notebook), the 60 of them and
# in the order PromptSRC ensembles for the frozen text features (its trainers/imagenet_templates.py).
TEXT_DIVERSITY_TEMPLATES = [
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
]


def gpa_weights(epochs, mean, std):
    """w_t, t = 1..E: the Gaussian density N(t; mean, std^2), normalised to sum 1 (Sec. 3.2.2)."""
    density = [math.exp(-0.5 * ((t - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for t in range(1, epochs + 1)]
    return [d / sum(density) for d in density]


def self_consistency_losses(logits, text_features, image_features, frozen_logits, frozen_text, frozen_image):
    """(L_SCL-text, L_SCL-image, L_SCL-logits) before their weights (Sec. 3.2.1)."""
    text = F.l1_loss(text_features, frozen_text)
    image = F.l1_loss(image_features, frozen_image)
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel()  # KL(frozen || prompted)
    return text, image, kl


class VLPromptLearner(LeadingContextLearner):
    """P_1 (``ctx``), P_2..P_Jt (``deep_text_ctx``), P~_1 (``visual_ctx``) and P~_2..P~_Jv
    (``deep_visual_ctx``), all N(0, 0.02^2) but P_1."""

    def __init__(self, backbone, classnames, n_ctx_text, n_ctx_vision, ctx_init, depth_text, depth_vision):
        check_deep_prompts(backbone, "PromptSRC")
        text_layers, text_width, vision_layers, vision_width = tower_sizes(backbone)
        check_depth("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", depth_text, text_layers, "text")
        check_depth("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", depth_vision, vision_layers, "image")
        if depth_text < 1:
            raise UserError(f"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT must be at least 1 (the context P_1 is always "
                            f"learned), got {depth_text}")
        super().__init__(backbone, classnames, n_ctx_text, ctx_init)
        device = self.ctx.device
        self.deep_text_ctx = normal_prompts(depth_text - 1, n_ctx_text, text_width, device)
        self.visual_ctx = normal_prompts(1, n_ctx_vision, vision_width, device)[0] if depth_vision else None
        self.deep_visual_ctx = normal_prompts(max(depth_vision - 1, 0), n_ctx_vision, vision_width, device)

    def deep_text_prompts(self):
        return list(self.deep_text_ctx)

    def vision_prompts(self):
        return [] if self.visual_ctx is None else [self.visual_ctx] + list(self.deep_visual_ctx)


@trainer
class PromptSRC(DeepPromptTrainer):
    table_order = 7
    def build_model(self):
        src = self.cfg.TRAINER.PROMPTSRC
        learner = VLPromptLearner(self.clip_model, self.classnames, src.N_CTX_TEXT, src.N_CTX_VISION, src.CTX_INIT,
                                  src.PROMPT_DEPTH_TEXT, src.PROMPT_DEPTH_VISION)
        self.model = DeepPromptCLIP(self.clip_model, learner).to(self.device)
        self.register_prompt_learner()
        self.frozen_text_features = self.diverse_text_features()  # g~
        self.gpa_weights = gpa_weights(self.cfg.OPTIM.MAX_EPOCH, src.GPA_MEAN, src.GPA_STD)
        self.gpa_sum = None

    @torch.no_grad()
    def diverse_text_features(self):
        """g~: the mean over TEXT_DIVERSITY_TEMPLATES of the frozen text features, then normalised."""
        backbone = self.clip_model
        names = [name.replace("_", " ") for name in self.classnames]
        total = sum(backbone.encode_text(backbone.tokenize([t.format(n) for n in names]).to(backbone.text_device))
                    .float() for t in TEXT_DIVERSITY_TEMPLATES)
        return F.normalize(total / len(TEXT_DIVERSITY_TEMPLATES), dim=-1)

    def forward_backward(self, batch):
        images, label = self.parse_batch_train(batch)
        src = self.cfg.TRAINER.PROMPTSRC
        scale = self.logit_scale
        with self.autocast():
            text_features = self.model.encode_prompts()
            image_features = self.model.encode_images(images)
            logits = scale * image_features @ text_features.t()
            with torch.no_grad():
                frozen_image = self.clip_model.encode_images(images)  # f~
                frozen_logits = scale * frozen_image @ self.frozen_text_features.t()
            ce = F.cross_entropy(logits, label)
            text, image, kl = self_consistency_losses(logits, text_features, image_features, frozen_logits,
                                                      self.frozen_text_features, frozen_image)
            loss = ce + src.TEXT_LOSS_WEIGHT * text + src.IMAGE_LOSS_WEIGHT * image + kl
        self.model_backward_and_update(loss)
        return {"loss": loss.item(), "ce": ce.item(), "scl_text": text.item(), "scl_image": image.item(),
                "scl_logits": kl.item(), "acc": compute_accuracy(logits, label)[0].item()}

    def after_epoch(self):
        # GPA (Sec. 3.2.2): add this epoch's prompts with their weight; after the last epoch the
        # prompts become the aggregate, before the checkpoint is written.
        weight = self.gpa_weights[self.epoch]
        learned = dict(self.prompt_learner.named_parameters())
        weighted = {key: param.detach() * weight for key, param in learned.items()}
        self.gpa_sum = weighted if self.gpa_sum is None else {key: self.gpa_sum[key] + weighted[key] for key in learned}
        if self.epoch + 1 == self.max_epoch:
            with torch.no_grad():
                for key, param in learned.items():
                    param.copy_(self.gpa_sum[key])
            print(f"GPA: the prompts are their Gaussian-weighted mean over {self.max_epoch} epochs")
        super().after_epoch()

    # Checkpoints between epochs also hold GPA's running sum, so that --resume continues it.
    GPA_PREFIX = "gpa_sum."

    def checkpoint_state(self, name):
        state = super().checkpoint_state(name)
        if self.gpa_sum is not None and self.epoch + 1 < self.max_epoch:
            state.update({self.GPA_PREFIX + key: value.clone() for key, value in self.gpa_sum.items()})
        return state

    def load_checkpoint_state(self, name, state_dict):
        running = {key[len(self.GPA_PREFIX):]: value for key, value in state_dict.items()
                   if key.startswith(self.GPA_PREFIX)}
        super().load_checkpoint_state(name, {k: v for k, v in state_dict.items() if not k.startswith(self.GPA_PREFIX)})
        self.gpa_sum = {key: value.to(self.device) for key, value in running.items()} or None

    def upstream_state(self, state_dict):
        # The official trainer saves its whole model; its learned tensors are the text context and the
        # "VPT" tokens inside its modified CLIP (layer i's deep prompts in resblocks.i, i >= 1).
        if "prompt_learner.ctx" not in state_dict:
            return state_dict
        ours = {"ctx": state_dict["prompt_learner.ctx"]}
        for key, value in state_dict.items():
            parts = key.split(".")
            if key == "image_encoder.VPT":
                ours["visual_ctx"] = value
            elif parts[-1] == "VPT_shallow" and parts[0] in ("image_encoder", "text_encoder"):
                target = "deep_visual_ctx" if parts[0] == "image_encoder" else "deep_text_ctx"
                ours[f"{target}.{int(parts[-2]) - 1}"] = value
        return ours
