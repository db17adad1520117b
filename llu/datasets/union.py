"""The union of several datasets: each member read as its own run reads it (the same shots, seed and
base/new split: the same few-shot images), their class sets concatenated. It is what one model
trained on all members' data at once sees: the multi-dataset protocol's "union" baseline.
"""
from llu.engine import CN, DatasetBase, Datum, config_extension
from llu.utils import UserError

from . import DatasetFacts, dataset, dataset_facts
from .splits import refuse_twin_classes


@config_extension
def add_union_config(cfg):
    cfg.DATASET.UNION = CN()
    cfg.DATASET.UNION.MEMBERS = []  # DATASET.NAMEs of the datasets joined, each read with this run's settings


@dataset
class Union(DatasetFacts, DatasetBase):

    def __init__(self, cfg):
        from llu.engine import DATASET_REGISTRY
        members = list(cfg.DATASET.UNION.MEMBERS)
        if not members:
            raise UserError("DATASET.UNION.MEMBERS: name the datasets to join (DATASET.NAMEs), e.g. ['Shapes', 'Patterns']")
        other = [name for name in members if dataset_facts(name).template != self.template]
        if other:
            raise UserError(f"DATASET.UNION.MEMBERS: {', '.join(other)} prompt with another template than "
                            f"{self.template!r}; the union's class texts use one")
        splits, offset, classes = ([], [], []), 0, []
        for name in members:
            member_cfg = cfg.clone()
            member_cfg.defrost()
            member_cfg.DATASET.NAME = name
            member = DATASET_REGISTRY.get(name)(member_cfg)
            for joined, items in zip(splits, (member.train_x, member.val, member.test)):
                joined += [Datum(impath=d.impath, label=d.label + offset, domain=d.domain, classname=d.classname)
                           for d in items]
            classes += [(f"{name}: {c}", c) for c in member.classnames]
            offset += member.num_classes
        refuse_twin_classes(classes, "DATASET.UNION.MEMBERS")
        super().__init__(train_x=splits[0], val=splits[1], test=splits[2])
