"""Inference: the feature extractor, image-input coercion and folder listing.

``FeatureExtractor`` is the one way mdpr embeds images (extract, query, evaluate, training's evaluation).
"""

from mdpr.inference.backends import BACKENDS, check_precision_match
from mdpr.inference.extractor import ExtractedBatch, FeatureExtractor, Progress
from mdpr.inference.inputs import ImageFileDataset, ImageInput, as_image_list, collate_images, to_pil
from mdpr.inference.listing import ImageItem, image_files, items_from_folder

__all__ = [
    "BACKENDS",
    "ExtractedBatch",
    "FeatureExtractor",
    "ImageFileDataset",
    "ImageInput",
    "ImageItem",
    "Progress",
    "as_image_list",
    "check_precision_match",
    "collate_images",
    "image_files",
    "items_from_folder",
    "to_pil",
]
