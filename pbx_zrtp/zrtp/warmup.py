"""Pay a process's one-time crypto set-up before the first call, not during it.

The first X25519 key, the first AES and HMAC contexts of a fresh process cost
OpenSSL about 15 ms of set-up; a long-running relay pays that once, but it
would land inside the first call's handshake. ``warm_up`` runs one complete
exchange between two throwaway engines in memory for each given key agreement.
"""

from __future__ import annotations

import os

from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.kem import KEMS
from pbx_zrtp.zrtp.keyagreement import KEY_AGREEMENTS


def warm_up(key_agreements: tuple[bytes, ...]) -> None:
    for name in key_agreements:
        if name not in KEY_AGREEMENTS and name not in KEMS:
            continue
        initiator = ZrtpConnection(
            ZrtpConfiguration(zid=os.urandom(12), role="initiator", key_agreement_types=(name,)),
            ssrc=1,
        )
        responder = ZrtpConnection(
            ZrtpConfiguration(zid=os.urandom(12), role="responder", key_agreement_types=(name,)),
            ssrc=2,
        )
        initiator.start(0.0)
        responder.start(0.0)
        for _ in range(20):  # a complete exchange takes 8 messages each way at most
            for source, target in ((initiator, responder), (responder, initiator)):
                for datagram in source.datagrams_to_send():
                    target.receive_datagram(datagram, 0.0)
            if initiator.state is State.SECURE and responder.state is State.SECURE:
                break
        initiator.close()
        responder.close()
