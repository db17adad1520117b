"""Zero-shot CLIP: the "CLIP" row of every table. Nothing is trained.

Class texts come from the dataset's hand-made template (``ZeroshotCLIP``) or from the average of
that template and CLIP's seven selected ImageNet templates (``ZeroshotCLIP2``); logits are Eq. 1.
Both are facts of the dataset's reader (``template``, ``ensemble_templates``).
"""

from llu.datasets import dataset_facts

from . import trainer
from .clip_common import ClipTrainer, dataset_template


@trainer
class ZeroshotCLIP(ClipTrainer):
    learns = False
    trains_epochs = False
    display_name = "CLIP"
    table_order = 0

    def templates(self):
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_model(self):
        self.text_features = self.class_text_features(self.templates())

    def model_inference(self, image_features):
        return self.class_logits(image_features, self.text_features)

    def train_without_epochs(self):
        print(f"{type(self).__name__} learns nothing; evaluating")
        self.test()


@trainer
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over the dataset template and CLIP's selected ImageNet templates (on
    ImageNet the seven alone, as upstream: they were chosen on it)."""

    display_name = "CLIP (ensemble)"
    table_order = 1

    def templates(self):
        return dataset_facts(self.cfg.DATASET.NAME).ensemble_templates()
