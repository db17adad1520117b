"""EuroSAT (CoOp layout): ``eurosat/2750/<class>/``, ``eurosat/split_zhou_EuroSAT.json``.

The folder names become CoOp's more descriptive class names ("SeaLake" -> "Sea or Lake").
"""

from . import dataset
from .coop_common import SplitFileDataset


@dataset
class EuroSAT(SplitFileDataset):
    dataset_dir = "eurosat"
    image_dir = "2750"
    template = "a centered satellite photo of {}."
    table_order = 9
    new_cnames = {
        "AnnualCrop": "Annual Crop Land",
        "Forest": "Forest",
        "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "Highway": "Highway or Road",
        "Industrial": "Industrial Buildings",
        "Pasture": "Pasture Land",
        "PermanentCrop": "Permanent Crop Land",
        "Residential": "Residential Buildings",
        "River": "River",
        "SeaLake": "Sea or Lake",
    }
