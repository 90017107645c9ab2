"""A MONAI Label-compatible datastore: images and labels in a local folder, label versions, active learning.

`LocalDatastore` reads a folder as MONAI Label users have it (images in the root, `labels/<tag>/`) and keeps
its own metadata, label history and locks under `.aiaa/`. No web framework here: the HTTP API maps onto it.
"""

from aiaa_server.datastore.ids import DEFAULT_EXTENSIONS, LabelTag, check_image_id, check_tag
from aiaa_server.datastore.local import LocalDatastore
from aiaa_server.datastore.models import (
    DatastoreJson,
    DatastoreLimits,
    DatastoreStats,
    ImageInfo,
    LabelInfo,
    LabelVersion,
    LockInfo,
    TrainItem,
)
from aiaa_server.datastore.strategies import STRATEGIES

__all__ = [
    "DEFAULT_EXTENSIONS", "STRATEGIES", "DatastoreJson", "DatastoreLimits", "DatastoreStats", "ImageInfo",
    "LabelInfo", "LabelTag", "LabelVersion", "LocalDatastore", "LockInfo", "TrainItem", "check_image_id",
    "check_tag",
]
