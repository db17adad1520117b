from .data_manager import DataManager, DatasetWrapper, build_data_loader, read_image
from .datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
from .transforms import build_transform
