"""FreeSWITCH integration: an ESL client that steers calls through the relay."""
