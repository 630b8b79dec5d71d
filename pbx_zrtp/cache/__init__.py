"""Retained-secret caches (RFC 6189 §4.6.1, §4.9) behind one interface."""

from pbx_zrtp.cache.base import NEVER_EXPIRES, CacheEntry, CacheError, CacheKey, SecretCache
from pbx_zrtp.cache.memory import CacheEntryInfo, MemorySecretCache
from pbx_zrtp.cache.sqlite import SqliteSecretCache

__all__ = [
    "NEVER_EXPIRES",
    "CacheEntry",
    "CacheEntryInfo",
    "CacheError",
    "CacheKey",
    "MemorySecretCache",
    "SecretCache",
    "SqliteSecretCache",
]
