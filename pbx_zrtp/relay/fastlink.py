"""The glue between a call and the native fast path (fastpath.py, _fastpath.c).

:class:`FastLink` is owned by one mirror and holds the call's SRTP state: made
from the first keys the engine gives, used by Python, lent to a native worker
once the call is secure, taken back when the worker lets go, dropped only when
the call's keys go. :class:`FastWorkers` is the relay's side: it spreads calls
over the workers and routes what a worker punts back to the call's link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pbx_zrtp.calls import TRAFFIC_FIELDS
from pbx_zrtp.relay.fastpath import FastPath
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp.events import SrtpKeys

log = logging.getLogger("pbx_zrtp.relay")

Address = tuple[str, int]
#: What a link does with a datagram its worker punted: (data, source, "phone" | "pbx").
PuntHandler = Callable[[bytes, Address, str], None]

#: The worker's per-call counters that add to a mirror's traffic counters (all
#: but priming, which only Python does) ...
FAST_TRAFFIC = tuple(name for name in TRAFFIC_FIELDS if name != "priming_sent")
#: ... and those that add to its drops (same names as the Python path's reasons).
FAST_DROPS = (
    "srtp_auth",
    "srtp_protect",
    "srtp_repeat",
    "wrong_source",
    "oversize",
    "punt_overflow",
    "send_errors",
    "recv_errors",
)


def _reading(transport: asyncio.DatagramTransport, on: bool) -> None:
    """pause_reading/resume_reading: selector datagram transports have them, though
    the typing stubs do not (and uvloop's lack them: the fast path is then unused)."""
    method: Any = getattr(transport, "resume_reading" if on else "pause_reading", None)
    if method is not None:
        with contextlib.suppress(RuntimeError):
            method()


class FastLink:
    """One call's SRTP state and the native worker it may be lent to.

    The invariant this class keeps: **one SRTP state per direction per call,
    carried across every hand-over, never re-created.** ``srtp`` is made once,
    from the engine's first keys (:meth:`keys`); Python protects and unprotects
    with it until the call is secure; :meth:`enter` lends the very same libsrtp
    sessions to the worker (nothing copied: ROC and replay window stay one);
    a phone that moves is followed in place (:meth:`follow`); :meth:`leave` gives
    the sessions back to Python, state and all. Only :meth:`drop` forgets them,
    when the call's keys are gone (GoClear, ZRTP failure, the call's end).
    """

    __slots__ = (
        "_on_punt",
        "_pbx_out_seen",
        "_phone",
        "_sockets",
        "_workers",
        "handle",
        "srtp",
        "worker",
    )

    def __init__(self, workers: FastWorkers | None, on_punt: PuntHandler) -> None:
        self._workers = workers
        #: The native worker this call's secured RTP goes to (None: Python only).
        self.worker: FastPath | None = workers.assign() if workers is not None else None
        self._on_punt = on_punt
        self.srtp: SrtpContext | None = None
        #: The worker's handle while it forwards this call, else None.
        self.handle: int | None = None
        self._phone: Address | None = None  # the phone address the worker sends to
        self._pbx_out_seen = 0
        self._sockets: tuple[asyncio.DatagramTransport, ...] = ()

    @property
    def attached(self) -> bool:
        return self.handle is not None

    # ------------------------------------------------------------------ the SRTP state

    def keys(self, keys: SrtpKeys) -> SrtpContext:
        """The call's SRTP state, made from ``keys`` if it has none yet (the engine
        gives keys once per exchange: SrtpKeysReady, then Secured with the same).
        ValueError: no SRTP profile for these keys."""
        if self.srtp is None:
            self.srtp = SrtpContext(keys)
        return self.srtp

    def drop(self) -> dict[str, int]:
        """The call's keys are gone: leave the worker and forget the state. Returns
        the worker's final counters of this call ({} if it was not forwarding)."""
        final = self.leave()
        self.srtp = None
        return final

    # ------------------------------------------------------------------ hand-overs

    def enter(
        self,
        phone_socket: asyncio.DatagramTransport,
        pbx_socket: asyncio.DatagramTransport,
        phone: Address,
        pbx: Address,
        tag: str,
    ) -> bool:
        """Hand both sockets' reading and the call's SRTP sessions to the worker
        (RTCP, ZRTP and anything unexpected come back through :meth:`punted`).
        False: the call stays in Python (no worker, no keys, or the worker refused)."""
        worker, srtp, workers = self.worker, self.srtp, self._workers
        if worker is None or workers is None or srtp is None or self.handle is not None:
            return False
        if not (hasattr(phone_socket, "pause_reading") and hasattr(pbx_socket, "pause_reading")):
            return False  # e.g. uvloop's UDP transports cannot stop reading
        _reading(phone_socket, False)
        _reading(pbx_socket, False)
        try:
            handle = worker.attach(
                phone_fd=phone_socket.get_extra_info("socket").fileno(),
                pbx_fd=pbx_socket.get_extra_info("socket").fileno(),
                phone_addr=phone,
                pbx_addr=pbx,
                srtp=srtp,  # lent, not copied
            )
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("%s fast path unavailable (%s); staying in Python", tag, exc)
            _reading(phone_socket, True)
            _reading(pbx_socket, True)
            return False
        self.handle = handle
        self._phone = phone
        self._pbx_out_seen = 0
        self._sockets = (phone_socket, pbx_socket)
        workers.route(worker, handle, self)
        return True

    def leave(self) -> dict[str, int]:
        """Take the call back from the worker: the sessions are Python's again, state
        and all, and the sockets read on the loop. Returns the worker's final
        counters of this call ({} if it was not forwarding)."""
        handle, worker, workers = self.handle, self.worker, self._workers
        if handle is None or worker is None or workers is None:
            return {}
        self.handle = None
        self._phone = None
        workers.route(worker, handle, None)
        final: dict[str, int] = {}
        with contextlib.suppress(KeyError, RuntimeError):
            final = worker.detach(handle)
        for transport in self._sockets:
            if not transport.is_closing():
                _reading(transport, True)
        self._sockets = ()
        return final

    def follow(self, phone: Address | None) -> bool:
        """The worker sends to ``phone`` from now on, if the phone moved while it
        forwards: a packet from there authenticated and was fresh under the call's
        live replay window (the worker's sessions are the call's). Nothing is
        re-created. False: the worker cannot follow; the caller leaves it."""
        handle, worker = self.handle, self.worker
        if handle is None or worker is None or phone == self._phone:
            return True
        try:
            if phone is None:
                raise ValueError("no phone")
            worker.set_phone(handle, phone)
        except (KeyError, ValueError, RuntimeError):
            return False
        self._phone = phone
        return True

    def punted(self, data: bytes, addr: Address, side: str) -> None:
        """A datagram the worker did not handle (ZRTP, RTCP, strangers)."""
        self._on_punt(data, addr, side)

    # ------------------------------------------------------------------ the worker's figures

    def figures(self) -> dict[str, int]:
        """The worker's live counters of this call ({} if it is not forwarding)."""
        handle, worker = self.handle, self.worker
        if handle is None or worker is None:
            return {}
        with contextlib.suppress(KeyError, RuntimeError):
            return worker.stats(handle)
        return {}

    def heard(self) -> int:
        """Datagrams the worker received for this call (forwarded or dropped)."""
        fast = self.figures()
        if not fast:
            return 0
        return (
            fast.get("phone_in", 0)
            + fast.get("pbx_in", 0)
            + sum(fast.get(name, 0) for name in FAST_DROPS)
        )

    def pbx_progress(self) -> tuple[bool, bool]:
        """(the PBX was heard, packets went to the PBX since the last ask), from the
        worker's counters: it reads the PBX socket while it forwards (priming)."""
        fast = self.figures()
        if not fast:
            return False, False
        forwarded = fast.get("pbx_out", 0) > self._pbx_out_seen
        if forwarded:
            self._pbx_out_seen = fast["pbx_out"]
        return fast.get("pbx_in", 0) > 0, forwarded


class FastWorkers:
    """The relay's native workers (each a C thread, so several use several cores):
    calls spread round robin, and each worker's punt queue read on the loop and
    routed to the link whose handle it names."""

    def __init__(self, workers: list[FastPath]) -> None:
        self.workers = workers
        self._routes: dict[tuple[FastPath, int], FastLink] = {}
        self._reading = False
        self._next = 0

    def assign(self) -> FastPath | None:
        """The worker for a new call, round robin (None: there are none)."""
        if not self.workers:
            return None
        worker = self.workers[self._next % len(self.workers)]
        self._next += 1
        return worker

    def route(self, worker: FastPath, handle: int, link: FastLink | None) -> None:
        """``link`` owns ``handle`` on ``worker`` from now on (None: nobody does)."""
        if link is None:
            self._routes.pop((worker, handle), None)
        else:
            self._routes[(worker, handle)] = link

    def start(self) -> None:
        """Read every worker's punt queue on the running loop."""
        if self._reading:
            return
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            loop.add_reader(worker.punt_fd(), self._drain, worker)
        self._reading = True

    def close(self) -> None:
        """Stop reading the punt queues and stop the workers (every loan ends)."""
        for worker in self.workers:
            if self._reading:
                asyncio.get_running_loop().remove_reader(worker.punt_fd())
            worker.close()
        self._reading = False

    def _drain(self, worker: FastPath) -> None:
        try:
            punted = worker.read_punted()
        except RuntimeError:
            return  # closed
        for handle, data, addr, side in punted:
            link = self._routes.get((worker, handle))
            if link is None:
                continue
            try:
                link.punted(data, addr, side)
            except Exception:  # one bad datagram must never stop the others
                log.exception("internal error on a punted datagram; dropped")
