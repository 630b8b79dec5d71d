"""Asterisk integration: an AMI client that steers calls through the relay."""
