"""UCF101 (CoOp layout): ``ucf101/UCF-101-midframes/<Action_Name>/<video>.jpg``, ``ucf101/split_zhou_UCF101.json``.

One middle frame per video. Without the split file it is rebuilt as CoOp does from
``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`` (20% of each class's training videos become
val). Class names split the CamelCase action at capitals: "ApplyEyeMakeup" -> "Apply_Eye_Makeup".
"""
import os.path as osp
import re

from llu.engine import Datum
from llu.utils import UserError

from . import dataset
from .coop_common import SplitFileDataset, read_lines
from .splits import train_val_test


@dataset
class UCF101(SplitFileDataset):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    rebuild_from = ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                    "ucfTrainTestlist/testlist01.txt")
    template = "a photo of a person doing {}."
    table_order = 10

    def make_split(self):
        cname2lab = {}
        for line in read_lines(osp.join(self.dataset_dir, "ucfTrainTestlist/classInd.txt"), "UCF101 classes",
                               self.layout()):
            label, action = line.split()
            cname2lab[action] = int(label) - 1
        return train_val_test(self.read_data(cname2lab, "ucfTrainTestlist/trainlist01.txt"),
                              self.read_data(cname2lab, "ucfTrainTestlist/testlist01.txt"))

    def read_data(self, cname2lab, list_file):
        path = osp.join(self.dataset_dir, list_file)
        items = []
        for line in read_lines(path, "UCF101 video list", self.layout()):
            action, _, video = line.split()[0].partition("/")
            if action not in cname2lab:
                raise UserError(f"{path}: action {action!r} is not listed in classInd.txt")
            classname = "_".join(re.findall("[A-Z][^A-Z]*", action))
            frame = osp.splitext(video)[0] + ".jpg"
            items.append(Datum(impath=osp.join(self.image_dir, classname, frame), label=cname2lab[action],
                               classname=classname))
        return items
