"""Data sets and loaders: `build_data(name, ...)` returns train/test(/hold-out) loaders.

Names: `synthetic` (tiny, deterministic, for tests and demos), `cifar10_jpg`
(the JPEG archive in $PRUNELAB_DATA, decoded once and cached in
$PRUNELAB_CACHE), `cifar10` / `cifar100` (torchvision's pickled batches),
`imagefolder` (any `train/<class>/`, `val/<class>/` tree, streamed);
detection: `coco128`, `coco128_seg` (with masks), `yolo` (any YOLO-layout
folder or archive), `coco_json` (COCO instances files);
point clouds: `modelnet10` (the PCD archive) and `pointfolder` (any folder
or archive of `<class>/<split>/*.pcd`).
"""

from prunelab.data.archive import (
    CIFAR10_JPG_NAME,
    CIFAR10_JPG_SHA256,
    decode_archive,
    load_cifar10_jpg,
    load_image_archive,
    sha256_file,
)
from prunelab.data.arrays import ImageArrays, cache_root, data_root
from prunelab.data.augment import (
    crop_flip,
    cutout,
    draw_crop_flip,
    draw_cutout,
    norm_constants,
    normalize,
    resize,
)
from prunelab.data.cifar import load_cifar_pickled
from prunelab.data.detection import (  # registers coco128, coco128_seg, yolo, coco_json
    COCO128_SHA256,
    DetectionBundle,
)
from prunelab.data.detection_loader import DetectionLoader
from prunelab.data.folder import FolderLoader, ShardSampler, imagenet_transforms
from prunelab.data.loader import TensorLoader, shard_positions
from prunelab.data.pcd import normalize_cloud, parse_pcd
from prunelab.data.point_loader import PointAugment, PointCloudLoader
from prunelab.data.pointcloud import (  # registers modelnet10 and pointfolder
    MODELNET10_SHA256,
    PointArrays,
    PointCloudBundle,
    load_point_clouds,
)
from prunelab.data.registry import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    Loader,
    available_data,
    build_data,
    in_random_order,
    register_data,
    split_holdout,
)
from prunelab.data.synthetic import make_synthetic

__all__ = [
    "CIFAR10_JPG_NAME",
    "CIFAR10_JPG_SHA256",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "COCO128_SHA256",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELNET10_SHA256",
    "DataBundle",
    "DetectionBundle",
    "DetectionLoader",
    "FolderLoader",
    "ImageArrays",
    "Loader",
    "PointArrays",
    "PointAugment",
    "PointCloudBundle",
    "PointCloudLoader",
    "ShardSampler",
    "TensorLoader",
    "available_data",
    "build_data",
    "cache_root",
    "crop_flip",
    "cutout",
    "data_root",
    "decode_archive",
    "draw_crop_flip",
    "draw_cutout",
    "imagenet_transforms",
    "in_random_order",
    "load_cifar10_jpg",
    "load_cifar_pickled",
    "load_image_archive",
    "load_point_clouds",
    "make_synthetic",
    "norm_constants",
    "normalize",
    "normalize_cloud",
    "parse_pcd",
    "register_data",
    "resize",
    "sha256_file",
    "shard_positions",
    "split_holdout",
]
