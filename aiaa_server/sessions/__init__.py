"""Sessions (protocol section 5): the store, its metadata backends (disk or Redis), upload files and the cache.

Floor 2 (storage): imports the imaging core and pure helpers, never the services or the web layer.
"""

from aiaa_server.sessions.models import ImageMeta, SessionCreated, SessionInfo, SessionStats
from aiaa_server.sessions.store import PERSIST_FRACTION, NotSupported, SessionNotFound, SessionStore

__all__ = [
    "PERSIST_FRACTION", "ImageMeta", "NotSupported", "SessionCreated", "SessionInfo", "SessionNotFound",
    "SessionStats", "SessionStore",
]
