"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang and Xu, "Visual-Language Prompt Tuning
with Knowledge-guided Context Optimization", CVPR 2023; github.com/htyao89/KgCoOp).

CoOp (``coop.py``) whose learned class texts are held near the hand-made ones. With w_i the unit-norm
text feature of the learned prompt [SOS] [V]_1 .. [V]_M [CLASS_i] . [EOS] and w_i^clip that of the
dataset's hand-made prompt ("a photo of a {}."), both through CLIP's frozen text encoder, the
knowledge-guided term is the mean squared distance over the N_c training classes (Sec. 3.2)

    L_kg = 1/N_c sum_i ||w_i - w_i^clip||^2,        L = L_ce + lambda L_kg.

The official code writes the distance through cosines, 1 - mean_i cos(w_i, w_i^clip), which for unit
vectors is L_kg / 2; its lambda (``TRAINER.COOP.W``, 8.0 in the published runs) multiplies that form,
and so does ``TRAINER.KGCOOP.W`` here, so that the published value means what it meant upstream.

As upstream: the context is the 4 vectors of "a photo of a" (CTX_INIT, or upstream's ``CTX_INIT True``
whatever the dataset), shared by all classes; the hand-made prompts are CoOp's templates except on
DTD; only the context is trained. When the hand-made prompt is "a photo of a {}." the learned prompt
starts as that very sentence, so w_i = w_i^clip and L_kg = 0 at initialisation; with a longer
template (Pets' "a photo of a {}, a type of pet.") it does not. Inference is CoOp's: w^clip is
used by the loss only, so a checkpoint (the context) is evaluated on new classes as CoOp's is.
"""
import torch.nn.functional as F

from llu.engine import CN, compute_accuracy, config_extension

from . import trainer
from .clip_common import dataset_template
from .coop import CoOp


@config_extension
def add_kgcoop_config(cfg):
    cfg.TRAINER.KGCOOP = CN()
    # lambda, the weight of the knowledge-guided term as the official code writes it (1 - mean cos,
    # = L_kg / 2); 8.0 is the paper's and the published runs' (upstream's TRAINER.COOP.W).
    cfg.TRAINER.KGCOOP.W = 8.0


# The official trainer's hand-made prompts (its CUSTOM_TEMPLATES) where they differ from CoOp's.
KGCOOP_TEMPLATES = {"DescribableTextures": "a photo of a {}, a type of texture."}

# Upstream initialises the context from these words whenever CTX_INIT is set, whatever the dataset.
INIT_TEMPLATE = "a photo of a {}."


def knowledge_guided_loss(text_features, hand_made_text_features):
    """1 - mean_i cos(w_i, w_i^clip): half of L_kg for unit-norm features (the official form)."""
    return 1.0 - F.cosine_similarity(text_features, hand_made_text_features, dim=-1).mean()


@trainer
class KgCoOp(CoOp):
    table_order = 5
    # The published runs train 100 epochs at batch 128 whatever the shots (vit_b16_ep100_ctxv1.yaml),
    # not CoOp's epochs by shots: the config's MAX_EPOCH stands.
    published_epochs = None  # its config's epochs for any shots, as published (not CoOp's schedule)

    def template(self):
        """CTX_INIT "template" (upstream's ``True``) starts from "a photo of a" on every dataset."""
        return INIT_TEMPLATE

    def hand_made_template(self):
        name = self.cfg.DATASET.NAME
        return KGCOOP_TEMPLATES.get(name, dataset_template(name))

    def build_model(self):
        super().build_model()
        # w^clip: the general knowledge the learned class texts are held near (frozen).
        self.hand_made_text_features = self.class_text_features([self.hand_made_template()])

    def forward_backward(self, batch):
        inputs, label = self.parse_batch_train(batch)
        with self.autocast():
            text_features = self.model.encode_prompts(self.prompt_learner())  # w_i
            logits = self.model(inputs, text_features=text_features)
            ce = F.cross_entropy(logits, label)
            kg = knowledge_guided_loss(text_features, self.hand_made_text_features)
            loss = ce + self.cfg.TRAINER.KGCOOP.W * kg  # L = L_ce + lambda L_kg (lambda on L_kg / 2)
        self.model_backward_and_update(loss)
        return {"loss": loss.item(), "ce": ce.item(), "kg": kg.item(),
                "acc": compute_accuracy(logits, label)[0].item()}

    def load_checkpoint_state(self, name, state_dict):
        # The official prompt learner also saves a bias vector and a meta-net that its forward never
        # reads (frozen, random): dropped, so its checkpoints load here.
        state_dict = {key: value for key, value in state_dict.items()
                      if key != "bias_vectors" and not key.startswith("meta_net.")}
        super().load_checkpoint_state(name, state_dict)
