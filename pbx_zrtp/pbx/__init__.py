"""The PBX-adapter contract: what every PBX adapter is made of.

- ``link``: ``PbxLink``, what an adapter needs from its PBX's management
  connection (``Ami``, ``Esl``);
- ``book``: ``CallBook``, the flows every adapter shares (start a call, write
  results, resync after a reconnect, admin verbs, enrollment);
- ``variables``: the declarative table from a call report to a PBX's variables;
- ``registry``: the PBXs, each imported only when configured.
"""
