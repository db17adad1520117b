"""CoOp: Context Optimization (Zhou, Yang, Loy and Liu, "Learning to Prompt for Vision-Language
Models", IJCV 2022).

The class text of CLIP's zero-shot classifier is replaced by a prompt whose context words are
learned vectors: t_i = [SOS] [V]_1 ... [V]_M [CLASS_i] . [EOS], and
p(y = i | x) = exp(cos(g(t_i), f(x)) / tau) / sum_j exp(cos(g(t_j), f(x)) / tau),
with CLIP's image encoder f, text encoder g and temperature tau all frozen. Only [V] is trained,
by cross-entropy. The context is shared by all classes, or class-specific (CSC); the class token
sits at the end, in the middle or at the front.

``PromptTrainer`` below is what CoOp, CoCoOp and ProGrad share: the data path (cached image
features when training applies no augmentation, CLIP's image encoder under no_grad otherwise),
precision, and checkpoints that hold only learned parameters, so that a model trained on base
classes is evaluated on new ones (``--eval-only --model-dir`` with another class set).
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.engine import CN, config_extension
from llu.utils import UserError

from . import trainer
from .clip_common import ClipTrainer, dataset_template


@config_extension
def add_coop_config(cfg):
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # M, the number of learned context vectors (CoOp's few-shot default)
    # Words initialising the context ("a photo of a"; then the context is that many vectors, N_CTX
    # unused, as upstream); "template": the words of the dataset's hand-made template (ProGrad's
    # initialisation, which keeps N_CTX); "": N_CTX random N(0, 0.02^2) vectors.
    cfg.TRAINER.COOP.CTX_INIT = ""
    cfg.TRAINER.COOP.CSC = False  # class-specific context: one context per class (cannot move to new classes)
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # where [CLASS] sits: end, middle or front


# Training transforms that make every epoch see different pixels; without them the image features
# never change and are read from the feature cache.
AUGMENTATIONS = ("random_resized_crop", "random_flip")


def template_context(template):
    """The words of a hand-made template, placed before the class name (ProGrad's reordering):
    'a photo of a {}, a type of pet.' -> 'a type of pet, a photo of a'."""
    before, after = template.split("{}")
    after = after.strip().rstrip(".").lstrip(",").strip()
    return ", ".join(part for part in (after, before.strip()) if part)


# ---------------------------------------------------------------------------------------------
# The prompt learner

class PromptLearner(nn.Module):
    """Learned context vectors [V]_1..[V]_M, kept in fp32 (the master copy under fp16), and the
    frozen token embeddings of [SOS], the class names, '.' and [EOS].

    The class-dependent buffers are non-persistent: a checkpoint holds the contexts only, and
    ``set_classnames`` rebuilds the buffers for any class set.
    """

    def __init__(self, backbone, classnames, n_ctx=16, ctx_init="", csc=False, class_token_position="end",
                 keep_n_ctx=False):
        """``ctx_init`` words ("a photo of a") initialise the context as upstream CoOp does: the context
        is then as many vectors as the words (N_CTX is not used), their tokens' embeddings. With
        ``keep_n_ctx`` (ProGrad's upstream), N_CTX stays and the words fill its last vectors, the
        ones before them starting at zero. Otherwise the N_CTX vectors start at N(0, 0.02^2)."""
        super().__init__()
        backbone.check_prompt_learning()
        if class_token_position not in ("end", "middle", "front"):
            raise UserError(f"CLASS_TOKEN_POSITION must be end, middle or front, got {class_token_position!r}")
        device = backbone.text_device
        ctx_dim = backbone.context_dim
        words = ctx_init.replace("_", " ").strip()
        n_words = len(words.split(" ")) if words else 0
        if words and not keep_n_ctx:
            n_ctx = n_words
        if n_ctx < 1:
            raise UserError(f"N_CTX must be at least 1, got {n_ctx}")
        if n_words > n_ctx:
            raise UserError(f"CTX_INIT {ctx_init!r} has {n_words} words, more than N_CTX {n_ctx}")
        if words and class_token_position != "end" and backbone.token_count(words) != n_words:
            raise UserError(f"CTX_INIT {ctx_init!r} has punctuation (more tokens than words); with "
                            f"CLASS_TOKEN_POSITION {class_token_position} use plain words")
        self.n_ctx, self.csc, self.class_token_position = n_ctx, csc, class_token_position
        shape = (len(classnames), n_ctx, ctx_dim) if csc else (n_ctx, ctx_dim)
        if words:
            with torch.no_grad():
                embedded = backbone.token_embedding(backbone.tokenize([words]).to(device))[0, 1:1 + n_words]
            ctx = torch.zeros(shape, device=device)
            ctx[..., n_ctx - n_words:, :] = embedded.float()
            self.prompt_prefix = " ".join(["X"] * (n_ctx - n_words) + [words])
        else:
            ctx = torch.empty(shape, device=device).normal_(std=0.02)
            self.prompt_prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        print(f'Initial context: "{self.prompt_prefix}" ({n_ctx} context tokens'
              + (", class-specific)" if csc else ")"))
        self.set_classnames(backbone, classnames)

    @property
    def init_text(self):
        return self.prompt_prefix

    def set_classnames(self, backbone, classnames):
        """(Re)build the class-dependent buffers for ``classnames``."""
        if self.csc and len(classnames) != self.ctx.shape[0]:
            raise UserError(f"class-specific contexts were made for {self.ctx.shape[0]} classes, not {len(classnames)}")
        names = [name.replace("_", " ") for name in classnames]
        # As upstream: the prompt is the initial text and the name; the first n_ctx tokens after [SOS]
        # are replaced by the learned context (a word split into several tokens keeps the rest frozen).
        try:
            tokens = backbone.tokenize([f"{self.prompt_prefix} {name}." for name in names])
        except UserError as e:
            raise UserError(f"{e} (N_CTX {self.n_ctx} context tokens, the class name and 3 more must fit)") from None
        tokens = tokens.to(backbone.text_device)
        with torch.no_grad():
            embeddings = backbone.token_embedding(tokens).type(backbone.dtype)
        self.register_buffer("tokenized_prompts", tokens, persistent=False)
        self.register_buffer("token_prefix", embeddings[:, :1], persistent=False)  # [SOS]
        self.register_buffer("token_suffix", embeddings[:, 1 + self.n_ctx:], persistent=False)  # [CLASS] . [EOS]
        name_lengths = [backbone.token_count(name) for name in names]
        self.register_buffer("position_index", self._position_index(name_lengths, tokens.shape[1]), persistent=False)

    def _position_index(self, name_lengths, length):
        """Per class, the order that moves [CLASS] from the end layout to ``class_token_position``."""
        m, half = self.n_ctx, self.n_ctx // 2
        rows = []
        for n in name_lengths:
            context, name, rest = list(range(1, 1 + m)), list(range(1 + m, 1 + m + n)), list(range(1 + m + n, length))
            if self.class_token_position == "front":
                rows.append([0] + name + context + rest)
            elif self.class_token_position == "middle":
                rows.append([0] + context[:half] + name + context[half:] + rest)
            else:
                rows.append(list(range(length)))
        return torch.tensor(rows, dtype=torch.long, device=self.ctx.device)

    def assemble(self, ctx):
        """Prompt embeddings [n_cls, L, D] from a shared [M, D] or class-specific [n_cls, M, D] context."""
        prefix, suffix = self.token_prefix, self.token_suffix
        ctx = ctx.type(prefix.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(prefix.shape[0], -1, -1)
        prompts = torch.cat([prefix, ctx, suffix], dim=1)
        if self.class_token_position == "end":
            return prompts
        return prompts.gather(1, self.position_index.unsqueeze(-1).expand_as(prompts))

    def forward(self):
        return self.assemble(self.ctx)


# ---------------------------------------------------------------------------------------------
# The model: frozen CLIP reading the learned prompts

class CoOpCLIP(nn.Module):
    """CLIP whose class texts are the prompt learner's prompts; logits are tau^-1 cos(g(t_i), f(x))."""

    def __init__(self, backbone, prompt_learner):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.backbone = backbone

    def encode_images(self, inputs):
        """Unit-norm float32 image features; cached features ([B, D]) pass through unchanged."""
        if inputs.dim() == 2:
            return inputs
        with torch.no_grad():
            return self.backbone.encode_images(inputs)

    def encode_prompts(self, prompts):
        return F.normalize(self.backbone.encode_prompts(prompts, self.prompt_learner.tokenized_prompts).float(), dim=-1)

    def forward(self, inputs, text_features=None):
        """Logits of images (or cached features); ``text_features`` skips encoding the prompts."""
        if text_features is None:
            text_features = self.encode_prompts(self.prompt_learner())
        return self.backbone.logit_scale.exp().float() * self.encode_images(inputs) @ text_features.t()


# ---------------------------------------------------------------------------------------------
# Trainers

class PromptTrainer(ClipTrainer):
    """What CoOp-family trainers share: the data path, precision, and class-free checkpoints.

    Subclasses build ``self.model`` (with ``self.model.prompt_learner``) in ``build_model`` and
    call ``register_prompt_learner``. Training batches are cached features (``ClipTrainer``)
    unless ``INPUT.TRANSFORMS`` asks for augmentation; then the image loader's batches go through
    CLIP's frozen image encoder every step. Evaluation always reads cached features (test images
    are never augmented).
    """

    def register_prompt_learner(self):
        self.prompt_learner = self.model.prompt_learner
        self.register_learned("prompt_learner", self.prompt_learner)
        if self.cfg.MODEL.INIT_WEIGHTS:  # CoOp's way to start from a trained context
            self.load_init_weights(self.cfg.MODEL.INIT_WEIGHTS, "prompt_learner")
        # fp16: CLIP runs in half precision, the prompt learner stays fp32; amp: autocast + loss scaling.
        use_amp = self.device.type == "cuda" and self.cfg.TRAINER.PREC == "amp"
        self.scaler = torch.amp.GradScaler("cuda") if use_amp else None

    @property
    def augments_images(self):
        return any(name in AUGMENTATIONS for name in self.cfg.INPUT.TRANSFORMS)

    def trains_on_features(self):
        return not self.augments_images  # cached batches would repeat the same pixels every epoch

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.scaler is not None else contextlib.nullcontext()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def model_update(self, names=None):
        if self.scaler is None:
            return super().model_update(names)
        for name in self.get_model_names(names):
            self.scaler.step(self._optims[name])
        self.scaler.update()
        self.check_parameters(names)

    def model_inference(self, inputs):
        return self.model(inputs)

    # Prediction on any class names: the learned context goes before each name, as in training.

    def use_classnames(self, classnames):
        """Rebuild the prompt learner's class buffers for ``classnames`` (class-specific contexts only
        for the classes they were trained on)."""
        names = list(classnames)
        if names == getattr(self, "prompt_classnames", self.classnames):
            return
        if self.prompt_learner.csc and names != list(self.classnames):
            raise UserError(f"class-specific contexts (CSC True) belong to the {len(self.classnames)} classes they "
                            f"were trained on; they cannot score other class names")
        self.prompt_learner.set_classnames(self.clip_model, names)
        self.prompt_classnames = names

    def class_features(self, classnames):
        """Text features of the learned prompts [SOS] [V]_1..[V]_M [CLASS] . [EOS] of ``classnames``."""
        self.use_classnames(classnames)
        return self.model.encode_prompts(self.prompt_learner())

    def class_logits(self, image_features, text_features):
        return self.model(image_features, text_features=text_features)

    def prediction_templates(self):
        return [f"{self.prompt_learner.prompt_prefix} {{}}."]  # each X a learned context vector

    # Checkpoints: learned parameters only (no token embeddings of the training classes).

    def checkpoint_state(self, name):
        learner = self._models[name]
        state = {key: value.detach().clone() for key, value in learner.named_parameters()}
        if learner.csc:
            state["classnames"] = list(self.classnames)  # class-specific contexts are only valid for these
        return state

    def load_checkpoint_state(self, name, state_dict):
        learner = self._models[name]
        expected = dict(learner.named_parameters())
        # Upstream CoOp checkpoints also carry the training classes' token_prefix / token_suffix: ignored.
        learned = {key: value for key, value in state_dict.items() if key in expected}
        unknown = sorted(set(state_dict) - set(expected) - {"classnames", "token_prefix", "token_suffix"})
        missing = sorted(set(expected) - set(learned))
        if unknown or missing:
            raise UserError(f"the checkpoint does not fit {self.cfg.TRAINER.NAME}'s prompt learner "
                            f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(unknown) or '-'}); "
                            f"was it trained by another trainer?")
        trained_ctx = learned["ctx"]
        trained_csc = trained_ctx.dim() == 3
        if trained_csc != learner.csc:
            raise UserError(f"the checkpoint holds {'class-specific' if trained_csc else 'shared'} contexts; "
                            f"set TRAINER.COOP.CSC {trained_csc} to load it")
        if learner.csc:
            trained_classes = state_dict.get("classnames")
            if trained_ctx.shape[0] != len(self.classnames) or (
                    trained_classes is not None and list(trained_classes) != list(self.classnames)):
                raise UserError(
                    f"class-specific contexts (CSC True) belong to the {trained_ctx.shape[0]} classes they were "
                    f"trained on and cannot be evaluated on another class set ({len(self.classnames)} classes "
                    f"here); train with TRAINER.COOP.CSC False to evaluate on new classes")
        if trained_ctx.shape[-1] != learner.ctx.shape[-1]:
            raise UserError(f"the checkpoint's context vectors have width {trained_ctx.shape[-1]}, this backbone's "
                            f"text encoder {learner.ctx.shape[-1]}; it was trained with another backbone")
        if trained_ctx.shape != learner.ctx.shape:
            raise UserError(f"the checkpoint's context has shape {tuple(trained_ctx.shape)}, this run's "
                            f"{tuple(learner.ctx.shape)}; use the N_CTX it was trained with")
        learner.load_state_dict(learned)


def coop_epochs(dataset, shots):
    """OPTIM.MAX_EPOCH of CoOp's published runs (its scripts) on ``dataset`` (a dataset config name,
    e.g. ``imagenet``) with ``shots`` per class: 50 for 1 shot, 100 for 2 to 4, 200 for 8 and more;
    50 on ImageNet whatever the shots. The trainers that follow CoOp's schedule point to it."""
    if dataset == "imagenet" or shots <= 1:
        return 50
    return 100 if shots <= 4 else 200


@trainer
class CoOp(PromptTrainer):
    table_order = 2
    keeps_n_ctx = False  # CTX_INIT's words are the whole context (upstream CoOp)
    published_epochs = staticmethod(coop_epochs)  # the sweeps' epochs by shots (None on a trainer: its config's)

    def template(self):
        """The dataset's hand-made template (CTX_INIT "template" starts from its words)."""
        return dataset_template(self.cfg.DATASET.NAME)

    def build_model(self):
        coop = self.cfg.TRAINER.COOP
        ctx_init = template_context(self.template()) if coop.CTX_INIT == "template" else coop.CTX_INIT
        prompt_learner = PromptLearner(self.clip_model, self.classnames, coop.N_CTX, ctx_init, coop.CSC,
                                       coop.CLASS_TOKEN_POSITION, keep_n_ctx=self.keeps_n_ctx)
        self.model = CoOpCLIP(self.clip_model, prompt_learner).to(self.device)
        self.register_prompt_learner()
        self.eval_text_features = None

    @torch.no_grad()
    def _test(self, split):
        # The learned prompts do not depend on the image: encode them once per evaluation.
        self.set_model_mode("eval")
        self.eval_text_features = self.class_features(self.classnames)
        try:
            return super()._test(split)
        finally:
            self.eval_text_features = None

    def model_inference(self, inputs):
        return self.model(inputs, text_features=self.eval_text_features)
