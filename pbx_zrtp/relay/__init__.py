"""The ZRTP media relay: mirrors that put pbx_zrtp into a call's media path."""
