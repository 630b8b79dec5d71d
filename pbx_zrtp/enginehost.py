"""The one asyncio host of the sans-I/O ZRTP engine (as aioquic has one glue
between its QUIC connection and asyncio).

The engine does no I/O and keeps no clock: :class:`EngineHost` feeds it the
datagrams its owner hands over with the loop's time, sends what it queues,
passes its events on, keeps its one timer armed, and runs a blocking store off
the loop (:class:`~pbx_zrtp.storehost.EngineStore`). What differs between the
relay's mirrors and ``pbx-zrtp endpoint`` is where datagrams go and what an
event means: the ``send`` and ``on_event`` callbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pbx_zrtp.cache.base import CacheWrite, SecretCache
from pbx_zrtp.cache.worker import StoreWorker
from pbx_zrtp.storehost import EngineStore
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection, ZrtpSession
from pbx_zrtp.zrtp.events import Event


class EngineHost:
    """One engine on the running loop, from :meth:`start` (or the first datagram)
    to :meth:`close`; after close nothing reaches the owner any more."""

    def __init__(
        self,
        configuration: ZrtpConfiguration,
        *,
        loop: asyncio.AbstractEventLoop,
        ssrc: int,
        send: Callable[[bytes], None],
        on_event: Callable[[Event], None],
        cache: SecretCache | None = None,
        store: StoreWorker | None = None,
        write_failed: Callable[[CacheWrite, str], None] | None = None,
        label: str = "",
        session: ZrtpSession | None = None,
        multistream_only: bool = False,
        await_name: bool = False,
    ) -> None:
        """``store``: the worker threads that run ``cache`` when it blocks (SQLite,
        PostgreSQL); the engine then only asks, and ``cache`` is not touched here.
        Without it, the engine calls ``cache`` inline (in memory, or none).
        ``loop``: the owner's loop, whose clock and timers the engine runs on.
        ``session``, ``multistream_only``: a further stream of a call, keyed by
        Multistream from its first stream's session (ZrtpConnection).
        ``await_name``: the call is named later (:meth:`name_call`); its retained
        secrets are not looked up before (ZrtpConnection)."""
        self._loop = loop
        self._send = send
        self._on_event = on_event
        self._write_failed = write_failed
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._store: EngineStore | None = None
        if store is not None:
            self.engine = ZrtpConnection(
                configuration,
                ssrc=ssrc,
                host_cache=True,
                session=session,
                multistream_only=multistream_only,
                await_name=await_name,
            )
            self._store = EngineStore(
                store,
                self.engine,
                clock=self._loop.time,
                wake=self._store_answered,
                write_failed=self._store_write_failed,
                label=label,
            )
        else:
            self.engine = ZrtpConnection(
                configuration,
                ssrc=ssrc,
                cache=cache,
                session=session,
                multistream_only=multistream_only,
                await_name=await_name,
            )

    def now(self) -> float:
        """The engine's clock: the loop's."""
        return self._loop.time()

    def start(self) -> float:
        """Send our first Hello; returns the time it went."""
        now = self._loop.time()
        self.engine.start(now)
        self.pump()
        return now

    def receive(self, data: bytes) -> None:
        """A ZRTP datagram from the peer (the owner checked where it came from)."""
        if self.closed:
            return
        self.engine.receive_datagram(data, self._loop.time())
        self.pump()

    def name_call(self, self_uri: str, peer_uri: str) -> None:
        """The call is named: its URIs key the retained secrets (a lookup held for
        the name goes out now)."""
        if self.closed:
            return
        self.engine.name_call(self_uri, peer_uri, self._loop.time())
        self.pump()

    def adopt_session(self, session: ZrtpSession) -> None:
        """The unnamed port is a further stream of a call: Multistream from that
        call's ``session`` from now on (``ZrtpConnection.adopt_session``)."""
        if self.closed:
            return
        self.engine.adopt_session(session, self._loop.time())
        self.pump()

    def srtp_authenticated(self) -> None:
        """The peer's SRTP authenticated under the new keys (completes an initiator)."""
        if self.closed:
            return
        self.engine.srtp_authenticated(self._loop.time())
        self.pump()

    def pump(self) -> None:
        """Send what the engine queued, pass its events on, re-arm its timer."""
        if self.closed:
            return
        engine = self.engine
        for datagram in engine.datagrams_to_send():
            self._send(datagram)
        store = self._store
        while (event := engine.next_event()) is not None:
            if store is not None and store.handle(event):
                continue
            self._on_event(event)
            if self.closed:
                return  # the owner closed us on this event
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = engine.get_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def close(self) -> None:
        """Stop the engine and its timer; store answers that come later are dropped."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed:
            self.closed = True
            self.engine.close()

    def _on_timer(self) -> None:
        self._timer = None
        if not self.closed:
            self.engine.handle_timer(self._loop.time())
            self.pump()

    def _store_answered(self, engine: ZrtpConnection) -> None:
        """The store answered a lookup (on the loop): the exchange goes on."""
        if not self.closed:
            self.pump()

    def _store_write_failed(self, engine: ZrtpConnection, write: CacheWrite, error: str) -> None:
        if not self.closed and self._write_failed is not None:
            self._write_failed(write, error)
