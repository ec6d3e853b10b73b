"""Input processing: image reading, folder listing and batch preparation."""

from .errors import InputError
from .images import (
    IMAGE_EXTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_denormalize,
    imagenet_normalize,
    list_images,
    prepare_images,
    read_image,
)
from .resize import METHODS, PATCH_SIZE, PreparedImages, output_size

__all__ = [
    "IMAGE_EXTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METHODS",
    "PATCH_SIZE",
    "InputError",
    "PreparedImages",
    "imagenet_denormalize",
    "imagenet_normalize",
    "list_images",
    "output_size",
    "prepare_images",
    "read_image",
]
