"""CLIP-LoRA (Zanella and Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
CVPR Workshops 2024; github.com/MaxZanella/CLIP-LoRA).

Low-rank adapters (Hu et al., LoRA) on the attention projections of both of CLIP's encoders. A frozen
projection W in R^{d x d} of the chosen blocks (q, k and v by default) becomes

    h = W x + s B A drop(x),    A in R^{r x d},  B in R^{d x r},  s = alpha / sqrt(r)        (Eq. 2)

with B = 0 at initialisation (A as nn.Linear's weights), so training starts from CLIP itself. The
official code scales by alpha / sqrt(r) (its loralib/layers.py; Hu et al. wrote alpha / r) and drops
out the adapter's input only, during training; at evaluation the update is merged, W + s B A.
Only A and B are trained, by cross-entropy on CLIP's logits with the dataset's hand-made prompts
("a photo of a {}."), whose text features come from the adapted text encoder at every step:

    p(y = i | x) = softmax_i( (1 / tau) cos(f(x), g(t_i)) )

Published setting (the paper's Sec. 4 and run_utils.py): rank 2, alpha 1, dropout 0.25, every block
of both encoders, AdamW (lr 2e-4, weight decay 1e-2, betas 0.9 / 0.999), cosine to 1e-6 over
500 x N_shots steps of 32 images, RandomResizedCrop (scale 0.08-1) and flips. A checkpoint holds
A and B only (no class): a model trained on base classes is evaluated on new ones as it is.

nn.MultiheadAttention keeps q, k and v in one packed ``in_proj_weight``; ``LoRAAttention`` wraps it
(its weights are neither copied nor changed) and gives each projection its own update.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.engine import CN, build_optimizer, compute_accuracy, config_extension
from llu.utils import UserError

from . import trainer
from .clip_common import dataset_template
from .encoder_finetuning import EncoderTrainer, step_schedule, tuned_copy


@config_extension
def add_clip_lora_config(cfg):
    cfg.TRAINER.CLIP_LORA = CN()
    cfg.TRAINER.CLIP_LORA.RANK = 2  # r, the rank of B A (upstream's --r)
    cfg.TRAINER.CLIP_LORA.ALPHA = 1.0  # alpha: the update is scaled by alpha / sqrt(r) (upstream's --alpha)
    cfg.TRAINER.CLIP_LORA.DROPOUT = 0.25  # dropout on the adapters' input while training (upstream's --dropout_rate)
    cfg.TRAINER.CLIP_LORA.ENCODER = "both"  # which encoders are adapted: vision, text or both (upstream's --encoder)
    # Which blocks (upstream's --position): all, half-bottom, half-up (any depth), or of a 12-block
    # encoder bottom (0-3), mid (4-7), up (8-11), top3 (9-11).
    cfg.TRAINER.CLIP_LORA.POSITION = "all"
    cfg.TRAINER.CLIP_LORA.PARAMS = ["q", "k", "v"]  # adapted projections, of q, k, v, o (upstream's --params)
    # Steps = ITERS_PER_SHOT x DATASET.NUM_SHOTS (upstream's --n_iters 500 x --shots); with every
    # image (NUM_SHOTS -1) OPTIM.MAX_EPOCH epochs.
    cfg.TRAINER.CLIP_LORA.ITERS_PER_SHOT = 500
    cfg.TRAINER.CLIP_LORA.MIN_LR = 1e-6  # the cosine schedule's floor (upstream's eta_min)


PROJECTIONS = ("q", "k", "v", "o")
# Upstream's named block sets of a 12-block encoder (loralib/utils.py); "all" and the halves fit any depth.
TWELVE_BLOCK_POSITIONS = {"bottom": range(0, 4), "mid": range(4, 8), "up": range(8, 12), "top3": range(9, 12)}


def chosen_blocks(position, depth):
    if position == "all":
        return list(range(depth))
    if position in ("half-bottom", "half-up"):
        return list(range(depth // 2)) if position == "half-bottom" else list(range(depth // 2, depth))
    if position not in TWELVE_BLOCK_POSITIONS:
        raise UserError(f"TRAINER.CLIP_LORA.POSITION must be all, half-bottom, half-up, "
                        f"{', '.join(TWELVE_BLOCK_POSITIONS)}; got {position!r}")
    if depth != 12:
        raise UserError(f"TRAINER.CLIP_LORA.POSITION {position} names blocks of a 12-block encoder; this one has "
                        f"{depth}: use all, half-bottom or half-up")
    return list(TWELVE_BLOCK_POSITIONS[position])


# ---------------------------------------------------------------------------------------------
# The adapter

class LoRAAttention(nn.Module):
    """nn.MultiheadAttention whose projections p in ``projections`` get W_p + s B_p A_p (Eq. 2).

    The wrapped attention is not a submodule: its weights belong to the frozen backbone and are
    neither trained nor saved; the state dict holds lora_A.<p> and lora_B.<p> only."""

    def __init__(self, attention, projections, rank, alpha, dropout):
        super().__init__()
        if not attention._qkv_same_embed_dim:
            raise UserError("CLIP_LoRA adapts self-attention with one packed in_proj_weight; this attention "
                            "has separate key / value sizes")
        self.frozen = (attention,)
        width, device = attention.embed_dim, attention.in_proj_weight.device
        self.scaling = alpha / math.sqrt(rank)  # upstream's alpha / sqrt(r)
        self.lora_A = nn.ParameterDict({p: nn.Parameter(torch.empty(rank, width, device=device)) for p in projections})
        self.lora_B = nn.ParameterDict({p: nn.Parameter(torch.zeros(width, rank, device=device)) for p in projections})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's initialisation, as upstream
        self.dropout = nn.Dropout(dropout)

    @property
    def attention(self):
        return self.frozen[0]

    def update(self, projection, dtype):
        """s B A of one projection (zeros for one without an adapter)."""
        if projection not in self.lora_A:
            width = self.attention.embed_dim
            return torch.zeros(width, width, dtype=dtype, device=self.attention.in_proj_weight.device)
        return ((self.lora_B[projection] @ self.lora_A[projection]) * self.scaling).to(dtype)

    def adapted(self, x, projection):
        """s B A drop(x): the adapter's term of one projection's output."""
        return F.linear(self.dropout(x), self.update(projection, x.dtype))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        mha = self.attention
        batch_first = mha.batch_first and query.dim() == 3
        if batch_first:  # as nn.MultiheadAttention: one transposed tensor when q, k, v are the same
            same = query is key and key is value
            query, key, value = (query.transpose(0, 1),) * 3 if same else (t.transpose(0, 1) for t in (query, key, value))
        if self.training and self.dropout.p > 0:
            output = self._attend_with_dropout(query, key, value, key_padding_mask, attn_mask)
            return (output.transpose(0, 1) if batch_first else output), None
        # Merged: W + s B A, the packed weights and the output projection (exactly W while B = 0).
        dtype = mha.in_proj_weight.dtype
        in_proj = mha.in_proj_weight + torch.cat([self.update(p, dtype) for p in ("q", "k", "v")])
        out_proj = mha.out_proj.weight + self.update("o", dtype) if "o" in self.lora_A else mha.out_proj.weight
        output, weights = F.multi_head_attention_forward(
            query, key, value, mha.embed_dim, mha.num_heads, in_proj, mha.in_proj_bias, mha.bias_k, mha.bias_v,
            mha.add_zero_attn, mha.dropout, out_proj, mha.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (output.transpose(0, 1) if batch_first else output), weights

    def _attend_with_dropout(self, query, key, value, key_padding_mask, attn_mask):
        """Training with dropout: each projection's adapter sees its own dropped-out input, so the
        update is not a change of weights; attention is computed here (sequence-first tensors)."""
        mha = self.attention
        if key_padding_mask is not None or mha.bias_k is not None or mha.add_zero_attn:
            raise UserError("CLIP_LoRA's dropout supports CLIP's attention (no key padding mask, no added key bias)")
        weights = mha.in_proj_weight.chunk(3)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(x, weight, bias) + (self.adapted(x, p) if p in self.lora_A else 0)
                   for x, weight, bias, p in zip((query, key, value), weights, biases, "qkv"))
        target, batch, width = q.shape
        source, heads = k.shape[0], mha.num_heads
        q, k, v = (t.reshape(t.shape[0], batch * heads, width // heads).transpose(0, 1)
                   .reshape(batch, heads, t.shape[0], width // heads) for t in (q, k, v))
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # True: not attended, as in nn.MultiheadAttention
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.view(batch, heads, target, source)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask, mha.dropout if self.training else 0.0)
        attended = attended.permute(2, 0, 1, 3).reshape(target * batch, width)
        output = F.linear(attended, mha.out_proj.weight, mha.out_proj.bias)
        if "o" in self.lora_A:
            output = output + self.adapted(attended, "o")
        return output.view(target, batch, width)


def attention_blocks(backbone, tower):
    """The residual blocks of a tower ("image" or "text") whose ``attn`` is nn.MultiheadAttention
    (OpenAI's and OpenCLIP's ViTs and text transformers), or None."""
    model = getattr(backbone, "model", None)
    root = getattr(model, "visual", None) if tower == "image" else getattr(backbone, "text", model)
    blocks = getattr(getattr(root, "transformer", None), "resblocks", None)
    if not blocks or not all(isinstance(getattr(block, "attn", None), nn.MultiheadAttention) for block in blocks):
        return None
    return blocks


class LoRAAdapters(nn.Module):
    """Every adapter, by tower and block index (state dict: image.<i>.lora_A.q, text.<i>.lora_B.v, ...)."""

    def __init__(self, backbone, encoder, position, params, rank, alpha, dropout):
        """Wrap the chosen blocks' attention of ``backbone`` (a ``tuned_copy``: its blocks change)."""
        super().__init__()
        if encoder not in ("vision", "text", "both"):
            raise UserError(f"TRAINER.CLIP_LORA.ENCODER must be vision, text or both, got {encoder!r}")
        unknown = sorted(set(params) - set(PROJECTIONS))
        if unknown or not params:
            raise UserError(f"TRAINER.CLIP_LORA.PARAMS must name some of q, k, v, o; got {list(params)}")
        if rank < 1:
            raise UserError(f"TRAINER.CLIP_LORA.RANK must be at least 1, got {rank}")
        params = [p for p in PROJECTIONS if p in params]
        self.image, self.text = nn.ModuleDict(), nn.ModuleDict()
        towers = {"vision": ["image"], "text": ["text"], "both": ["text", "image"]}[encoder]  # upstream: text first
        for tower in towers:
            blocks = attention_blocks(backbone, tower)
            for index in chosen_blocks(position, len(blocks)):
                adapter = LoRAAttention(blocks[index].attn, params, rank, alpha, dropout)
                blocks[index].attn = adapter
                getattr(self, tower)[str(index)] = adapter


def lora_problem(backbone):
    """Why CLIP-LoRA cannot adapt this backbone, or None."""
    for tower in ("image", "text"):
        if attention_blocks(backbone, tower) is None:
            return (f"its {tower} encoder has no transformer blocks with nn.MultiheadAttention (CLIP-LoRA adapts "
                    f"OpenAI's and OpenCLIP's ViT-based CLIPs)")
    return None


# ---------------------------------------------------------------------------------------------
# The trainer

@trainer
class CLIP_LoRA(EncoderTrainer):
    table_order = 8
    display_name = "CLIP-LoRA"

    def build_model(self):
        settings = self.cfg.TRAINER.CLIP_LORA
        self.check_backbone(self.clip_model, lora_problem(self.clip_model))
        self.tuned = tuned_copy(self.clip_model)  # its own blocks, CLIP's frozen tensors
        self.adapters = LoRAAdapters(self.tuned, settings.ENCODER, settings.POSITION, list(settings.PARAMS),
                                     settings.RANK, settings.ALPHA, settings.DROPOUT)
        shots = self.cfg.DATASET.NUM_SHOTS
        steps = settings.ITERS_PER_SHOT * shots if shots > 0 else self.cfg.OPTIM.MAX_EPOCH * len(self.image_loader)
        self.set_total_steps(steps)
        optimizer = build_optimizer(self.adapters, self.cfg.OPTIM)  # AdamW (the configs)
        self.register_model("clip_lora", self.adapters, optimizer, step_schedule(optimizer, steps, min_lr=settings.MIN_LR))
        # The hand-made prompts: encoded at every step when the text encoder is adapted.
        self.prompt_tokens = self.tuned.tokenize(
            [dataset_template(self.cfg.DATASET.NAME).format(name.replace("_", " ")) for name in self.classnames]
        ).to(self.tuned.text_device)
        self.eval_text_features = None

    def text_features(self):
        """g(t_i) of the hand-made prompts through the (adapted) text encoder, unit norm."""
        return F.normalize(self.tuned.encode_text(self.prompt_tokens).float(), dim=-1)

    def logits(self, image_features, text_features):
        return self.logit_scale * image_features @ text_features.t()

    def forward_backward(self, batch):
        images, label = self.parse_batch_train(batch)
        with self.autocast():
            text_features = self.text_features()  # before the images, as upstream (the same dropout draws)
            logits = self.logits(self.tuned.encode_images(images), text_features)
            loss = F.cross_entropy(logits, label)
        self.model_backward_and_update(loss)
        return {"loss": loss.item(), "acc": compute_accuracy(logits, label)[0].item()}

    # Evaluation: the merged adapters; image features cached under a key that includes them.

    def evaluation_backbone(self):
        image_state = {f"image.{key}": value for key, value in self.adapters.image.state_dict().items()}
        scalings = sorted({adapter.scaling for adapter in self.adapters.image.values()})
        self.tuned.identity = self.tuned_identity(self.tuned, image_state, f"scaling {scalings}")
        return self.tuned

    @torch.no_grad()
    def _test(self, split):
        self.set_model_mode("eval")
        self.eval_text_features = self.text_features()  # the prompts do not depend on the image
        try:
            return super()._test(split)
        finally:
            self.eval_text_features = None

    def model_inference(self, image_features):
        return self.logits(image_features, self.eval_text_features)
