"""WiSE-FT: weight-space ensembles for fine-tuning (Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022; github.com/mlfoundations/wise-ft).

1. The zero-shot model theta_0: CLIP's image encoder f and a linear head whose rows are the classes'
   text features times CLIP's 1 / tau, with a zero bias, on unit-norm image features:
   logits = W f(x) / ||f(x)|| + b,  W = (1 / tau) [g(t_1) .. g(t_C)]^T,  b = 0.
2. Standard fine-tuning: encoder and head end to end by cross-entropy from theta_0, giving theta_1
   (AdamW, cosine schedule with warm-up, gradients clipped to norm 1; upstream's finetune.py).
3. The weight-space ensemble (Sec. 2): every parameter mixed with one coefficient alpha,

       theta_alpha = (1 - alpha) theta_0 + alpha theta_1,

   so alpha = 0 is the zero-shot model and alpha = 1 the fine-tuned one, exactly.

A checkpoint holds theta_1 (the fine-tuned image encoder and head, with the class names and the
backbone's hash): theta_0 is rebuilt from the backbone, and alpha (``TRAINER.WISEFT.ALPHA``) is chosen
at evaluation, so one training serves every alpha (``ALPHA_CURVE`` evaluates several at once).
New classes (base-to-new): the fine-tuned head has no rows for them, so their head is the zero-shot
one, the text features of their names, which is what the fine-tuned head's rows were before
training; the image encoder is theta_alpha's. The text encoder is never trained.
"""
import glob
import os.path as osp
import sys
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.engine import CN, build_optimizer, compute_accuracy, config_extension
from llu.utils import UserError

from . import trainer
from .encoder_finetuning import EncoderTrainer, step_schedule, tuned_copy
from .zsclip import ZeroshotCLIP2


@config_extension
def add_wiseft_config(cfg):
    cfg.TRAINER.WISEFT = CN()
    cfg.TRAINER.WISEFT.ALPHA = 0.5  # the mixing coefficient alpha of theta_alpha (upstream's --alpha default)
    # Also evaluate these alphas at the final test, into results.json's wiseft_alpha_curve (the paper's curves).
    cfg.TRAINER.WISEFT.ALPHA_CURVE = []
    cfg.TRAINER.WISEFT.WARMUP_FRACTION = 0.02  # linear warm-up share of the steps (upstream: 500 of 25,000)
    cfg.TRAINER.WISEFT.MAX_GRAD_NORM = 1.0  # gradient clipping (upstream's finetune.py)
    # The zero-shot head's prompts: False the dataset's hand-made template, True ZeroshotCLIP2's ensemble
    # (upstream's ImageNet runs average OpenAI's 80 ImageNet templates).
    cfg.TRAINER.WISEFT.ENSEMBLE = False


def interpolate(theta_0, theta_1, alpha):
    """theta_alpha = (1 - alpha) theta_0 + alpha theta_1, key by key."""
    return {key: (1 - alpha) * theta_0[key] + alpha * theta_1[key] for key in theta_0}


def image_tower_paths(backbone):
    """The submodules of a backbone that make its image features (fine-tuned and interpolated)."""
    if backbone.kind in ("openai", "openclip"):
        return ("model.visual",)
    if backbone.kind == "hf":
        return ("model.vision_model", "model.visual_projection")
    return None


class LinearHead(nn.Module):
    """logits = W f + b on unit-norm image features f (upstream's ClassificationHead)."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone())

    @classmethod
    def zero_shot(cls, text_features, logit_scale):
        """W = (1 / tau) x the classes' unit-norm text features, b = 0."""
        return cls(text_features.float() * logit_scale, torch.zeros(text_features.shape[0], device=text_features.device))

    def forward(self, image_features):
        return F.linear(image_features, self.weight, self.bias)


class FineTuned(nn.Module):
    """What fine-tuning changes: the image tower (the tuned copy's modules) and the head."""

    def __init__(self, backbone, paths, head):
        super().__init__()
        self.image_encoder = nn.ModuleDict({path.replace(".", "_"): backbone.get_submodule(path) for path in paths})
        self.head = head


@trainer
class WiSEFT(EncoderTrainer):
    table_order = 10
    display_name = "WiSE-FT"
    RESULT_EXTRAS = {"wiseft_alpha": float, "wiseft_alpha_curve": dict}

    def build_model(self):
        settings = self.cfg.TRAINER.WISEFT
        paths = image_tower_paths(self.clip_model)
        self.check_backbone(self.clip_model, None if paths else "it has no image encoder to fine-tune")
        self.paths = paths
        templates = ZeroshotCLIP2.templates(self) if settings.ENSEMBLE else None
        self.zero_shot_head = LinearHead.zero_shot(self.class_text_features(templates), self.logit_scale)
        self.zero_shot_head.requires_grad_(False)
        # theta_0: the frozen backbone's image tower (its tensors, not copies) and the zero-shot head.
        self.theta_0 = FineTuned(self.clip_model, paths, self.zero_shot_head).state_dict(keep_vars=False)
        self.theta_0 = {key: value.float() for key, value in self.theta_0.items()}
        # theta_1 starts as theta_0: a float32 copy of the image tower, and a copy of the head; both train.
        self.tuned = tuned_copy(self.clip_model, copied=paths)
        self.finetuned = FineTuned(self.tuned, paths, LinearHead(self.zero_shot_head.weight, self.zero_shot_head.bias))
        self.trained_classnames = list(self.classnames)
        steps = self.cfg.OPTIM.MAX_EPOCH * len(self.image_loader)
        self.set_total_steps(steps)
        self.max_grad_norm = settings.MAX_GRAD_NORM
        optimizer = build_optimizer(self.finetuned, self.cfg.OPTIM)  # AdamW on encoder and head (the configs)
        warmup = round(settings.WARMUP_FRACTION * steps)
        self.register_model("wiseft", self.finetuned, optimizer, step_schedule(optimizer, steps, warmup))
        self.alpha = settings.ALPHA

    def forward_backward(self, batch):
        images, label = self.parse_batch_train(batch)
        with self.autocast():
            logits = self.finetuned.head(self.tuned.encode_images(images))
            loss = F.cross_entropy(logits, label)
        self.model_backward_and_update(loss)
        return {"loss": loss.item(), "acc": compute_accuracy(logits, label)[0].item()}

    # The weight-space ensemble

    def theta(self, alpha):
        """theta_alpha of this run's classes: encoder and head interpolated; for classes the head was
        not trained on, the zero-shot head (the fine-tuned one has no rows for them)."""
        theta = interpolate(self.theta_0, self.finetuned.state_dict(), alpha)
        if self.trained_classnames != list(self.classnames):
            theta.update({f"head.{key}": value for key, value in self.zero_shot_head.state_dict().items()})
        return theta

    def ensemble(self, alpha):
        """(backbone with theta_alpha's image tower, head) for evaluation."""
        theta = self.theta(alpha)
        backbone = tuned_copy(self.clip_model, copied=self.paths)
        model = FineTuned(backbone, self.paths, LinearHead(self.zero_shot_head.weight, self.zero_shot_head.bias))
        model.load_state_dict(theta)
        model.eval()
        image_state = {key: value for key, value in theta.items() if key.startswith("image_encoder.")}
        backbone.identity = self.tuned_identity(backbone, image_state)
        return backbone, model.head

    def evaluation_backbone(self):
        return self.evaluation_model[0]

    def model_inference(self, image_features):
        return self.evaluation_model[1](image_features)

    @torch.no_grad()
    def _test(self, split):
        self.set_model_mode("eval")
        final = (split or self.cfg.TEST.SPLIT) == self.cfg.TEST.SPLIT
        self.alpha_curve = {}
        if final:
            for alpha in self.cfg.TRAINER.WISEFT.ALPHA_CURVE:
                self.evaluation_model = self.ensemble(float(alpha))
                correct = total = 0
                for features, labels in self.evaluation_batches(split or self.cfg.TEST.SPLIT):
                    correct += int((self.model_inference(features).argmax(dim=1) == labels).sum())
                    total += labels.numel()
                self.alpha_curve[f"{float(alpha):g}"] = 100.0 * correct / max(total, 1)
                print(f"alpha {float(alpha):g}: accuracy {self.alpha_curve[f'{float(alpha):g}']:.2f}%")
        self.evaluation_model = self.ensemble(self.alpha)
        try:
            return super()._test(split)
        finally:
            self.evaluation_model = None

    def extra_results(self):
        extras = {"wiseft_alpha": float(self.alpha)}
        if self.alpha_curve:
            extras["wiseft_alpha_curve"] = dict(self.alpha_curve)
        return extras

    # Checkpoints: theta_1 (encoder and head), the classes the head belongs to, the backbone it came from.

    def checkpoint_state(self, name):
        return {**{key: value.detach().clone() for key, value in self.finetuned.state_dict().items()},
                "classnames": list(self.trained_classnames), "backbone_sha256": self.clip_model.weights_sha256}

    def load_checkpoint_state(self, name, state_dict):
        state = dict(state_dict)
        trained_on, backbone = state.pop("classnames", None), state.pop("backbone_sha256", None)
        if backbone != self.clip_model.weights_sha256:
            raise UserError(f"the checkpoint was fine-tuned from other weights (sha256 {str(backbone)[:12]}) than "
                            f"MODEL.BACKBONE.NAME {self.cfg.MODEL.BACKBONE.NAME} ({self.clip_model.weights_sha256[:12]}): "
                            f"WiSE-FT interpolates with the zero-shot model it started from")
        expected = self.finetuned.state_dict()
        encoder = {key: value for key, value in state.items() if key.startswith("image_encoder.")}
        if set(encoder) != {key for key in expected if key.startswith("image_encoder.")} or not \
                all(encoder[key].shape == expected[key].shape for key in encoder) or \
                set(state) - set(encoder) != {"head.weight", "head.bias"}:
            raise UserError("the checkpoint does not fit WiSE-FT's image encoder and head; was it trained by another "
                            "trainer or with another backbone?")
        self.finetuned.load_state_dict(encoder, strict=False)
        if list(trained_on) == list(self.classnames):
            self.finetuned.head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
        else:
            print(f"Note: the head was fine-tuned on {len(trained_on)} other classes; these {len(self.classnames)} "
                  f"get the zero-shot head (the text features of their names)")
        self.trained_classnames = list(trained_on)


# ---------------------------------------------------------------------------------------------
# The accuracy-vs-mixing curve of a base-to-new results tree

def alpha_curve(tree):
    """{split: {alpha: mean accuracy over seeds}} of WiSE-FT's runs under ``tree`` (their
    wiseft_alpha_curve), split base or new, and H."""
    from llu.results import RunResults
    runs = defaultdict(lambda: defaultdict(list))
    for path in sorted(glob.glob(osp.join(tree, "**", "results.json"), recursive=True)):
        record = RunResults.from_json(path)
        if record.trainer == "WiSEFT" and record.extras.get("wiseft_alpha_curve"):
            for alpha, accuracy in record.extras["wiseft_alpha_curve"].items():
                runs[record.subsample_classes][float(alpha)].append(accuracy)
    curve = {split: {alpha: sum(values) / len(values) for alpha, values in sorted(by_alpha.items())}
             for split, by_alpha in runs.items()}
    if "base" in curve and "new" in curve:
        curve["H"] = {alpha: 2 * b * n / (b + n) if b + n else 0.0
                      for alpha, b, n in ((a, curve["base"][a], curve["new"].get(a, 0.0)) for a in curve["base"])}
    return curve


def main(argv=None):
    """python -m llu.trainers.wiseft RESULTS_TREE: the alpha curve as a table."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m llu.trainers.wiseft RESULTS_TREE (e.g. output/base2new)")
        return 2
    curve = alpha_curve(argv[0])
    if not curve:
        print(f"no WiSE-FT results with wiseft_alpha_curve under {argv[0]} (set TRAINER.WISEFT.ALPHA_CURVE)")
        return 1
    curve = {split: curve[split] for split in sorted(curve, key=lambda s: ("base", "new", "H", s).index(s) if s in
                                                             ("base", "new", "H") else 3)}
    alphas = sorted({alpha for values in curve.values() for alpha in values})
    print("| alpha | " + " | ".join(curve) + " |")
    print("| --- |" + " --- |" * len(curve))
    for alpha in alphas:
        print(f"| {alpha:g} | " + " | ".join(f"{curve[split].get(alpha, float('nan')):.2f}" for split in curve) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
