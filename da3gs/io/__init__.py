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

from .atomic import atomic_dir, atomic_path  # noqa: E402
from .cameras import (  # noqa: E402
    CameraSet,
    read_cameras_json,
    write_cameras_json,
    write_colmap_text,
    write_transforms_json,
)
from .depth import colorize_depth, load_depth, load_depth_png, save_depth, turbo_colormap  # noqa: E402
from .ply import read_ply, write_point_cloud_ply, write_ply  # noqa: E402
from .video import VideoError, ffmpeg_available, side_by_side, write_video  # noqa: E402

__all__ += [
    "atomic_path",
    "atomic_dir",
    "CameraSet",
    "write_cameras_json",
    "read_cameras_json",
    "write_transforms_json",
    "write_colmap_text",
    "save_depth",
    "load_depth",
    "load_depth_png",
    "colorize_depth",
    "turbo_colormap",
    "write_ply",
    "read_ply",
    "write_point_cloud_ply",
    "VideoError",
    "ffmpeg_available",
    "write_video",
    "side_by_side",
]
