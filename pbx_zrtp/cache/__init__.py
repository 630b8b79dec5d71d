"""Retained-secret caches (RFC 6189 §4.6.1, §4.9) behind one interface."""

from pbx_zrtp.cache.base import NEVER_EXPIRES, CacheEntry, CacheKey, SecretCache

__all__ = ["NEVER_EXPIRES", "CacheEntry", "CacheKey", "SecretCache"]
