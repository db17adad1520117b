"""LLUBank: trained LLU runs composed into one model, without retraining (the paper's closing "next
step": dataset-dependent adapters and interpolation weights, made scalable).

Each member k is an LLU adapter pair (g_I, g_T) with its anchor sets D_image, D_text and its beta,
gamma (``llu_adapter.LocalizedLinearAdapter``, loaded exactly as ``--eval-only`` loads it). For an
embedding f, every member's alpha_k(f) of Eq. 5 comes from one matrix product of f with all members'
anchors; then the rule (TRAINER.LLUBANK.RULE):

- ``nearest``: the member with the largest alpha_k applies its update (Eq. 4 with its alpha_k), the
  others none (equal weights: the member listed first);
- ``blend``:   f' = normalize(sum_k w_k normalize(g_k(f)) + (1 - sum_k w_k) f) with
  w_k = alpha_k * min(1, beta / sum_j alpha_j): each update weighted by its alpha, the weights
  scaled down together where their sum would pass beta (the largest of the members' betas).

Both are Eq. 4-5 when one member is near: a bank of one is its member bit for bit, and far from
every member's anchors all alpha are ~0 and f' is zero-shot CLIP's f.

Class texts: a class name one member trained on (its training classes, ``datasets.splits.class_key``)
is adapted by that member's text adapter only, as that member alone adapts it; a name several
members trained on is adapted by the rule among those members (nearest: the larger alpha, the first
listed on a tie; blend: both updates, scaled to sum <= beta); any other name by the rule over all
members (by its distance to their training texts, as LLU adapts new names).
"""
import argparse
import os
import os.path as osp
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.engine import CN, config_extension
from llu.utils import UserError, exit_on_user_error

from . import trainer
from .clip_common import ClipTrainer
from .clustering import _CHUNK_ELEMENTS
from .llu_adapter import LocalizedLinearAdapter, localized_update, weight_at_distance

RULES = ("nearest", "blend")
SIDES = ("image", "text")


@config_extension
def add_llubank_config(cfg):
    cfg.TRAINER.LLUBANK = CN()
    cfg.TRAINER.LLUBANK.RULE = "nearest"  # nearest: the member with the largest alpha updates; blend: alpha-weighted
    # LLU run folders (or `llu export` folders) a run of this trainer composes; `llu compose` fills it.
    cfg.TRAINER.LLUBANK.MEMBERS = []


# ---------------------------------------------------------------------------------------------
# The bank

# What alpha reads of one side, stacked over the members: anchors [N * M, D] (each member's set padded
# to M rows by repeating its first anchor, which changes no max), beta, gamma [N], which members use
# the Dirac mask and their thresholds, and which adapt this side at all.
_Side = namedtuple("_Side", "anchors width beta gamma dirac threshold adapts")


class AdapterBank(nn.Module):
    """N LLU adapters (``members``) applied to one embedding space by ``rule`` (nearest or blend)."""

    def __init__(self, members=(), rule="nearest"):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule = rule
        self.members = nn.ModuleList(members)
        self.refresh()

    def set_members(self, members):
        self.members = nn.ModuleList(members)
        self.refresh()

    def refresh(self):
        """Stack what alpha reads of the members (after they or their anchors change)."""
        self._sides = {side: self._stack(side) for side in SIDES}
        self.largest_beta = max((float(m.beta) for m in self.members), default=0.0)

    def _stack(self, side):
        sets = []
        for member in self.members:
            anchors = member.image_anchors if side == "image" else member.text_anchors
            sets.append(F.normalize(anchors.float(), dim=-1) if member.adapter(side) is not None else anchors[:0].float())
        width = max((a.shape[0] for a in sets), default=0)
        dim = self.members[0].dim if len(self.members) else 0
        padded = [a if a.shape[0] == width else torch.cat([a, (a[:1] if a.shape[0] else a.new_zeros(1, dim))
                                                           .expand(width - a.shape[0], dim)]) for a in sets]
        anchors = torch.cat(padded) if padded else torch.empty(0, dim)
        number = [float(m.beta) for m in self.members], [float(m.gamma) for m in self.members]
        return _Side(anchors, width, torch.tensor(number[0]), torch.tensor(number[1]),
                     torch.tensor([m.mask == "dirac" for m in self.members], dtype=torch.bool),
                     torch.tensor([float(m.dirac_threshold) for m in self.members]),
                     torch.tensor([a.shape[0] > 0 for a in sets], dtype=torch.bool))

    def _apply(self, fn, *args, **kwargs):  # .to(device) moves the stacks too
        module = super()._apply(fn, *args, **kwargs)
        self.refresh()
        return module

    def interpolation_weights(self, f, side):
        """[B, N]: alpha_k(f, D_side of member k) of Eq. 5 for every row of f and member, the cosines
        to all members' anchors in one matrix product (in row chunks, as one LLU computes them)."""
        stack = self._sides[side]
        n = len(self.members)
        dtype = torch.promote_types(f.dtype, torch.float32)
        if n == 0 or stack.width == 0:
            return f.new_zeros(f.shape[0], n, dtype=dtype)
        x = F.normalize(f.to(dtype), dim=-1)
        anchors = stack.anchors.to(device=x.device, dtype=dtype)
        rows = max(1, _CHUNK_ELEMENTS // anchors.shape[0])
        cosine = torch.cat([(chunk @ anchors.t()).view(chunk.shape[0], n, stack.width).amax(dim=2)
                            for chunk in x.split(rows)])
        distance = 1 - cosine.clamp(-1, 1)
        beta, gamma = stack.beta.to(x.device, dtype), stack.gamma.to(x.device, dtype)
        alpha = weight_at_distance(distance, beta, gamma)
        dirac = stack.dirac.to(x.device)
        if dirac.any():
            alpha[:, dirac] = weight_at_distance(distance[:, dirac], beta[dirac], gamma[dirac], "dirac",
                                                 stack.threshold.to(x.device, dtype)[dirac])
        return alpha.masked_fill(~stack.adapts.to(x.device), 0)

    def member_weights(self, alpha):
        """[B, N] weights of the members' updates under the rule, from their alphas."""
        if self.rule == "nearest":
            best = alpha.argmax(dim=1, keepdim=True)  # the first of equal weights
            return torch.zeros_like(alpha).scatter(1, best, alpha.gather(1, best))
        total = alpha.sum(dim=1, keepdim=True)
        beta = self.largest_beta
        return torch.where(total > beta, alpha * (beta / total), alpha)

    def transform(self, f, side, claims=None):
        """The embeddings f [B, D] updated by the bank. ``claims`` [B, N] (bool): rows with a True are
        updated by those members only (class texts of their training classes)."""
        f = f.to(torch.promote_types(f.dtype, torch.float32))
        if not any(m.adapter(side) is not None for m in self.members):
            return F.normalize(f, dim=-1)
        alpha = self.interpolation_weights(f, side)
        if claims is not None:
            claims = claims.to(alpha.device)
            alpha = alpha.masked_fill(~claims & claims.any(dim=1, keepdim=True), 0)
        weights = self.member_weights(alpha)
        if self.rule == "nearest":
            return self._nearest(f, side, weights)
        return self._blend(f, side, weights)

    def _nearest(self, f, side, weights):
        best = weights.argmax(dim=1)
        out = torch.empty_like(f)
        for k in best.unique().tolist():
            rows = (best == k).nonzero().squeeze(1)
            g = self.members[k].adapter(side)
            out[rows] = F.normalize(f[rows], dim=-1) if g is None else localized_update(f[rows], g, weights[rows, k])
        return out

    def _blend(self, f, side, weights):
        """Eq. 4 with several updates: normalize(sum_k w_k normalize(g_k(f)) + (1 - sum_k w_k) f)."""
        f = F.normalize(f, dim=-1)
        weights = weights.to(f.dtype)
        mixed = None
        for k in (weights > 0).any(dim=0).nonzero().flatten().tolist():
            term = weights[:, k:k + 1] * F.normalize(self.members[k].adapter(side)(f), dim=-1)
            mixed = term if mixed is None else mixed + term
        rest = (1 - weights.sum(dim=1, keepdim=True)) * f
        return F.normalize(rest if mixed is None else mixed + rest, dim=-1)

    def logits(self, image_features, text_features, logit_scale, text_claims=None, adapted_texts=None):
        """Eq. 1 on the bank's updated embeddings (``adapted_texts``: the texts' already, for fixed classes)."""
        if adapted_texts is None:
            adapted_texts = self.transform(text_features, "text", text_claims)
        return logit_scale * self.transform(image_features, "image") @ adapted_texts.t()


# ---------------------------------------------------------------------------------------------
# Members: trained LLU runs (or exports), read as llu.load reads them

def _member_config(path):
    """The run's (or export's) own config, as trained (llu.load adapts a copy to the machine)."""
    from llu.model import CONFIG_NAME, config_from_mapping, run_config
    from llu.utils import read_json
    exported = osp.join(path, CONFIG_NAME)
    if osp.isfile(exported) and not osp.isfile(osp.join(path, "config.yaml")):
        return config_from_mapping(read_json(exported)["settings"])
    return config_from_mapping(run_config(path))


def read_members(paths, device="cpu"):
    """(what the bank records of each member, the members' tensors as the bank's state, the backbone's
    sha256, the first member's config) from LLU run or export folders. Refuses, with one line, what is
    not an LLU model and members trained on different backbone weights."""
    from llu.model import load
    if not paths:
        raise UserError("a bank needs at least one member (LLU run folders)")
    records, state, first = [], {}, None
    for i, path in enumerate(paths):
        if not osp.isdir(path):
            raise UserError(f"{path}: no such folder (a bank's members are LLU run or export folders)")
        model = load(path, device=device)
        if model.trainer_name != "LLU":
            raise UserError(f"{path}: a {model.trainer_name} model; a bank composes LLU runs (TRAINER.NAME LLU)")
        backbone = model.backbone
        if not backbone.weights_sha256:
            raise UserError(f"{path}: its backbone {backbone.backbone_name!r} has no sha256 of its weights, so the "
                            f"members cannot be checked to share one")
        if first is None:
            first = (path, backbone.backbone_name, backbone.weights_sha256)
        elif backbone.weights_sha256 != first[2]:
            raise UserError(f"{path}: trained on backbone {backbone.backbone_name} (sha256 "
                            f"{backbone.weights_sha256[:16]}...), but {first[0]} on {first[1]} (sha256 {first[2][:16]}...);"
                            f" a bank's members share one backbone")
        adapter = model.trainer.adapter
        records.append({"source": osp.abspath(path), "dataset": model.cfg.DATASET.NAME,
                        "arguments": adapter.init_arguments(), "training_classes": list(model.training_classes or [])})
        state.update({f"members.{i}.{key}": value for key, value in adapter.state_dict().items()})
    return records, state, first[2], _member_config(paths[0])


# ---------------------------------------------------------------------------------------------
# The trainer

@trainer
class LLUBank(ClipTrainer):
    display_name = "LLU bank"
    table_order = 15  # after LLU
    trains_epochs = False  # composed from trained LLU runs (TRAINER.LLUBANK.MEMBERS), then evaluated
    MEMBERS_KEY, BACKBONE_KEY = "bank_members", "backbone_sha256"  # checkpoint entries besides the tensors

    @classmethod
    def check_run(cls, cfg, eval_only, model_dir):
        super().check_run(cfg, eval_only, model_dir)
        if not eval_only and not cfg.TRAINER.LLUBANK.MEMBERS:
            raise UserError("LLUBank composes trained LLU runs: list them in TRAINER.LLUBANK.MEMBERS (or `llu compose "
                            "RUN ... --output-dir BANK`), or evaluate a bank with --eval-only --model-dir BANK")

    def check_cfg(self, cfg):
        if cfg.TRAINER.LLUBANK.RULE not in RULES:
            raise UserError(f"TRAINER.LLUBANK.RULE must be one of {', '.join(RULES)}, got {cfg.TRAINER.LLUBANK.RULE!r}")

    def build_model(self):
        self.bank = AdapterBank(rule=self.cfg.TRAINER.LLUBANK.RULE).to(self.device)
        self.members_record, self.members_backbone = [], ""
        self.text_features = self.class_text_features()
        self._classes = None
        self.register_model("bank", self.bank)  # nothing is optimised

    def train_without_epochs(self):
        members = list(self.cfg.TRAINER.LLUBANK.MEMBERS)
        records, state, sha256, _ = read_members(members, "cpu")
        self.load_checkpoint_state("bank", {**state, self.MEMBERS_KEY: records, self.BACKBONE_KEY: sha256})
        print(f"LLUBank: {len(records)} members, rule {self.bank.rule}: " + ", ".join(
            f"{r['dataset']} ({len(r['training_classes'])} classes)" for r in records))
        self.save_model(0, self.output_dir)
        if not self.cfg.TEST.NO_TEST:
            self.test()

    def checkpoint_state(self, name):
        return {**self.bank.state_dict(), self.MEMBERS_KEY: self.members_record, self.BACKBONE_KEY: self.members_backbone}

    def load_checkpoint_state(self, name, state_dict):
        records, sha256 = state_dict.get(self.MEMBERS_KEY), state_dict.get(self.BACKBONE_KEY)
        if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("arguments"), dict)
                                                    for r in records):
            raise UserError(f"not a bank of LLU adapters (no '{self.MEMBERS_KEY}' list); was it saved by another trainer?")
        ours = self.clip_model.weights_sha256
        if sha256 and ours and sha256 != ours:
            raise UserError(f"the bank's members were trained on backbone weights with sha256 {sha256[:16]}..., but "
                            f"{self.clip_model.backbone_name} here has {ours[:16]}...")
        try:
            members = [LocalizedLinearAdapter(**record["arguments"]) for record in records]
        except (TypeError, ValueError) as e:
            raise UserError(f"a member's adapter settings cannot be read ({e})") from None
        self.bank.set_members(members)
        from llu.engine.utils import load_state_dict_strictly
        tensors = {key: value for key, value in state_dict.items() if key not in (self.MEMBERS_KEY, self.BACKBONE_KEY)}
        load_state_dict_strictly(self.bank, tensors, "LLUBank's bank")
        self.bank.to(self.device).eval()
        self.members_record, self.members_backbone, self._classes = records, sha256 or "", None

    def claims(self, classnames):
        """[K, N] bool: class k is among member n's training classes (by ``class_key``)."""
        from llu.datasets.splits import class_key
        trained = [{class_key(name) for name in record.get("training_classes") or ()} for record in self.members_record]
        return torch.tensor([[class_key(name) in names for names in trained] for name in classnames],
                            dtype=torch.bool, device=self.device).reshape(len(classnames), len(trained))

    def class_set(self, text_features, classnames):
        """(the frozen class texts, which members trained each name, the texts as the bank updates them):
        a class set's texts are updated once, not per batch of images (their cost grows with the members)."""
        claims = self.claims(classnames)
        return text_features, claims, self.bank.transform(text_features, "text", claims)

    def class_features(self, classnames):
        return self.class_set(super().class_features(classnames), classnames)

    def class_logits(self, image_features, classes):
        text_features, claims, adapted = classes
        return self.bank.logits(image_features, text_features, self.logit_scale, claims, adapted)

    def model_inference(self, image_features):
        if self._classes is None:
            self._classes = self.class_set(self.text_features, self.classnames)
        return self.class_logits(image_features, self._classes)

    RESULT_EXTRAS = {"llubank_rule": str, "llubank_members": list}

    def extra_results(self):
        return {"llubank_rule": self.bank.rule, "llubank_members": [record["source"] for record in self.members_record]}


# ---------------------------------------------------------------------------------------------
# llu compose

def compose(members, output_dir, rule="nearest", device="cpu"):
    """Write a bank of ``members`` (LLU run or export folders) into ``output_dir``: its config.yaml
    (the first member's, as an LLUBank with ``rule``) and checkpoint, loadable by ``llu.load`` and
    ``--eval-only --model-dir``. Everything is read and checked before anything is written."""
    from llu.engine.trainer import finished_run
    from llu.utils import atomic_path
    if rule not in RULES:
        raise UserError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    if osp.isfile(osp.join(output_dir, "config.yaml")) or finished_run(output_dir):
        raise UserError(f"{output_dir}: holds a run already; choose another --output-dir")
    records, state, sha256, cfg = read_members(members, device)
    cfg.defrost()
    cfg.TRAINER.NAME = "LLUBank"
    cfg.TRAINER.LLUBANK.RULE = rule
    cfg.TRAINER.LLUBANK.MEMBERS = [record["source"] for record in records]
    cfg.OUTPUT_DIR = osp.abspath(output_dir)
    from llu.model import _backbone
    bank = LLUBank.for_prediction(cfg, _backbone(cfg, torch.device(device)), ["object"], device)
    bank.load_checkpoint_state("bank", {**state, LLUBank.MEMBERS_KEY: records, LLUBank.BACKBONE_KEY: sha256})
    os.makedirs(output_dir, exist_ok=True)
    bank.write_checkpoints({"bank": bank.checkpoint_record("bank", 0)}, output_dir)
    with atomic_path(osp.join(output_dir, "config.yaml")) as tmp:
        with open(tmp, "w") as f:
            f.write(cfg.dump())
    print(f"Composed {len(records)} LLU members ({', '.join(r['dataset'] for r in records)}) into {output_dir} "
          f"(rule {rule})")
    return output_dir


def cli(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description="Compose trained LLU runs into one model (LLUBank): "
                                     "evaluate it with `llu train --trainer LLUBank --eval-only --model-dir BANK`, "
                                     "predict with `llu.load(BANK)`.")
    parser.add_argument("members", nargs="+", help="LLU run folders (or `llu export` folders), one backbone")
    parser.add_argument("--output-dir", required=True, help="the bank's folder")
    parser.add_argument("--rule", default="nearest", choices=RULES,
                        help="nearest: the member with the largest alpha updates; blend: alpha-weighted updates")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    return exit_on_user_error(lambda a: compose(a.members, a.output_dir, a.rule, a.device) and 0, args)
