"""pbx_zrtp: ZRTP (RFC 6189) for Asterisk and FreeSWITCH through an external media relay."""

__version__ = "0.1.0"
