"""Native fast path for the steady state of a secured call.

``_fastpath.c`` (next to this file) is compiled when the package is built (cffi,
API mode: ``_fastpath_build.py``, named in ``setup.py``) into the extension module
``pbx_zrtp.relay._fastpath_lib``; nothing is compiled at run time. One
:class:`FastPath` runs one native worker thread (epoll, ``recvmmsg``/``sendmmsg``)
that forwards the RTP of many calls; what it does not handle (ZRTP, RTCP, STUN,
packets from other sources on the phone side) is queued for Python ("punted").
An installation built without libsrtp2's headers or a compiler has no such module:
:func:`available` says so and the relay forwards in Python. IPv4 and IPv6 sockets
alike (each address of its socket's family).

One SRTP state per call: the worker does not make sessions. A call's
:class:`~pbx_zrtp.srtp.SrtpContext` lends it its two libsrtp sessions for as long
as the call is attached (their rollover counters and replay windows carry on
across every hand-over and relatch), and while it does, every use of them from
Python runs through :meth:`FastPath._srtp` under the worker's lock. The worker
therefore calls the libsrtp that made them, the one bundled in pylibsrtp's wheel
(OpenSSL's AES and HMAC), whose functions it takes with dlsym.

``PBX_ZRTP_FASTPATH_SANITIZE=1`` (tests only) compiles and loads an
AddressSanitizer + UndefinedBehaviorSanitizer build of the same source instead,
with gcc into a per-user cache directory, loaded with cffi in ABI mode; the
process must run with the sanitizer runtimes preloaded (``LD_PRELOAD``), which is
checked before loading. ``tests/relay/test_fastpath_sanitizers.py`` runs the fast
path's tests that way.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import shutil
import subprocess
import threading
from typing import Any

from pbx_zrtp.relay._fastpath_build import CDEF, MODULE, SOURCE_NAME, source_digest
from pbx_zrtp.srtp import STATUS_OK, Op, SrtpContext

# cffi ships no type stubs (and the project does not depend on types-cffi)
cffi: Any = importlib.import_module("cffi")

_SOURCE = pathlib.Path(__file__).with_name(SOURCE_NAME)

#: Why an installation has no native worker, and what to do about it.
NOT_BUILT = (
    "this installation was built without the native worker (libsrtp2's headers or a "
    "C compiler were missing at build time; apt install build-essential python3-dev "
    "libsrtp2-dev, then reinstall pbx-zrtp from source)"
)
STALE = (
    f"pbx_zrtp/relay/{SOURCE_NAME} changed since the native worker was built: "
    "rebuild it (bash install.sh, or pip install -e .)"
)

_ATTACH_ERRORS = {
    -1: "bad arguments (fds, or an address not of its socket's family)",
    -2: "no SRTP sessions (or the library is not initialised)",
    -3: "epoll_ctl failed (fd already attached or not a socket?)",
    -4: "out of memory",
}

_lock = threading.Lock()
_loaded: tuple[Any, Any] | None = None
_load_error: str | None = None


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return pathlib.Path(base) / "pbx-zrtp"
    return pathlib.Path(f"/tmp/pbx-zrtp-{os.getuid()}")


#: Opt-in sanitizer build (tests/relay/test_fastpath_sanitizers.py).
SANITIZE_ENV = "PBX_ZRTP_FASTPATH_SANITIZE"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
#: The sanitizer runtimes a sanitized build needs preloaded (gcc's names).
SANITIZER_RUNTIMES = ("libasan.so", "libubsan.so")


def _sanitize() -> bool:
    return os.environ.get(SANITIZE_ENV, "") not in ("", "0")


def _cflags() -> list[str]:
    """libsrtp2's headers (the types; its functions come from pylibsrtp's build)."""
    if shutil.which("pkg-config"):
        proc = subprocess.run(
            ["pkg-config", "--cflags", "libsrtp2"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode == 0:
            return proc.stdout.split()
    return []


def _check_sanitizer_runtime() -> None:
    """Loading an ASan build into a process without the runtime first would abort it."""
    maps = pathlib.Path("/proc/self/maps").read_text(errors="replace")
    missing = [name for name in SANITIZER_RUNTIMES if name not in maps]
    if missing:
        raise OSError(
            f"{SANITIZE_ENV} is set but {', '.join(missing)} is not preloaded "
            "(LD_PRELOAD=$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so))"
        )


def _build_sanitized() -> pathlib.Path:
    """The sanitizer build, compiled here (tests only: a checkout with gcc)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise OSError("no C compiler (gcc) on PATH")
    if not _SOURCE.is_file():
        raise OSError(f"{SANITIZE_ENV} needs the source, {_SOURCE} (a checkout)")
    flags = ["-O1", *SANITIZE_FLAGS, *_cflags(), "-lpthread", "-ldl"]
    source = _SOURCE.read_bytes()
    digest = source_digest(source + " ".join(flags).encode())[:16]
    prefix = "_fastpath-san-"
    out_dir = _cache_dir()
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if out_dir.stat().st_uid != os.getuid():
        raise OSError(f"{out_dir} is not owned by this user")
    lib = out_dir / f"{prefix}{digest}.so"
    if lib.is_file():
        return lib
    tmp = out_dir / f"{prefix}{digest}.{os.getpid()}.tmp"
    cmd = [gcc, "-std=gnu11", "-shared", "-fPIC", "-o", str(tmp), str(_SOURCE), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        hint = " (apt-get install libsrtp2-dev)" if "srtp2/srtp.h" in proc.stderr else ""
        raise OSError(f"compiling {SOURCE_NAME} failed{hint}: {proc.stderr.strip()[-1500:]}")
    os.replace(tmp, lib)
    for stale in out_dir.glob(f"{prefix}*.so"):  # older sources (unlinking a mapped .so is safe)
        if stale != lib:
            stale.unlink(missing_ok=True)
    return lib


def _open_sanitized() -> tuple[Any, Any]:
    _check_sanitizer_runtime()
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    try:
        lib = ffi.dlopen(str(_build_sanitized()))
    except OSError:  # another build's clean-up removed it meanwhile: once more
        lib = ffi.dlopen(str(_build_sanitized()))
    return ffi, lib


def _open_built() -> tuple[Any, Any]:
    """The module built with the package; in a checkout, only if built from this source."""
    try:
        native = importlib.import_module(MODULE)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == MODULE:
            raise OSError(NOT_BUILT) from None
        raise OSError(f"cannot load the native worker: {exc}") from exc
    ffi, lib = native.ffi, native.lib
    if _SOURCE.is_file():  # a checkout (wheels do not carry the source)
        built = ffi.string(lib.fp_source_sha256()).decode()
        if built != source_digest(_SOURCE.read_bytes()):
            raise OSError(STALE)
    return ffi, lib


def built_from_current_source() -> bool | None:
    """In a checkout: does the built worker match ``_fastpath.c``? None: no checkout or
    no built worker (tests/relay/test_fastpath.py fails on False)."""
    if not _SOURCE.is_file():
        return None
    try:
        native = importlib.import_module(MODULE)
    except ImportError:
        return None
    built = native.ffi.string(native.lib.fp_source_sha256()).decode()
    return bool(built == source_digest(_SOURCE.read_bytes()))


def _srtp_library() -> str:
    """The libsrtp that makes the sessions (pylibsrtp's bundled build): its file."""
    from pbx_zrtp.srtp import libsrtp_path  # loaded by pbx_zrtp.srtp already

    path = libsrtp_path()
    if not path:
        raise OSError("cannot locate pylibsrtp's libsrtp (pylibsrtp._binding has no file)")
    return path


def _load() -> tuple[Any, Any]:
    global _loaded, _load_error
    with _lock:
        if _loaded is not None:
            return _loaded
        if _load_error is not None:
            raise OSError(_load_error)
        try:
            ffi, lib = _open_sanitized() if _sanitize() else _open_built()
            srtp_lib = _srtp_library()
            status = lib.fp_init(srtp_lib.encode())
            if status != 0:
                raise OSError(f"fp_init failed ({status}): cannot use {srtp_lib!r}")
        except (OSError, subprocess.SubprocessError) as exc:
            _load_error = str(exc) or type(exc).__name__
            raise OSError(_load_error) from exc
        _loaded = (ffi, lib)
        return _loaded


def backend() -> str:
    """Which libsrtp the worker calls (the path of pylibsrtp's binding)."""
    ffi, lib = _load()
    return str(ffi.string(lib.fp_backend()).decode())


def build() -> str:
    """The build loaded: "asan" for the sanitizer build, "" for the normal one."""
    ffi, lib = _load()
    return str(ffi.string(lib.fp_build()).decode())


def is_rtcp(packet: bytes) -> bool:
    """The worker's RTCP demultiplexing rule (it must be ``pbx_zrtp.srtp.is_rtcp``'s)."""
    _, lib = _load()
    return bool(lib.fp_is_rtcp(packet, len(packet)))


def available() -> str | None:
    """None if the fast path can be used here, else why not."""
    try:
        _load()
    except OSError as exc:
        return str(exc)
    return None


class _Loan:
    """A call's sessions while the worker holds them: Python's uses go through it."""

    __slots__ = ("fastpath", "handle")

    def __init__(self, fastpath: FastPath) -> None:
        self.fastpath = fastpath
        self.handle = -1

    def run(self, op: Op, packet: bytes) -> tuple[int, bytes]:
        return self.fastpath._srtp(self.handle, op, packet)


class FastPath:
    """One native worker thread (epoll) forwarding secured RTP for many calls."""

    def __init__(self) -> None:
        self._ffi, self._lib = _load()
        self._names = self._ffi.string(self._lib.fp_counter_names()).decode().split(",")
        self._count = int(self._lib.fp_counter_count())
        self._mutex = threading.Lock()
        fp = self._lib.fp_create()
        if fp == self._ffi.NULL:
            raise OSError("fp_create failed (epoll, eventfd or thread)")
        self._fp: Any = fp
        self._punt_fd = int(self._lib.fp_punt_fd(fp))
        self._buf = self._ffi.new("uint8_t[]", 2048)
        self._ip_max = int(self._lib.fp_ip_max())
        self._ip = self._ffi.new("char[]", self._ip_max)
        self._out = self._ffi.new("uint64_t[]", self._count)
        self._handle = self._ffi.new("int64_t *")
        self._dir = self._ffi.new("int *")
        self._port = self._ffi.new("int *")
        self._sbuf = self._ffi.new("uint8_t[]", 2048)
        self._slen = self._ffi.new("int *")
        #: handle -> the SrtpContext whose sessions the worker borrows (kept alive here)
        self._loans: dict[int, SrtpContext] = {}

    def _live(self) -> Any:
        if self._fp is None:
            raise RuntimeError("FastPath is closed")
        return self._fp

    def attach(
        self,
        *,
        phone_fd: int,
        pbx_fd: int,
        phone_addr: tuple[str, int],
        pbx_addr: tuple[str, int],
        srtp: SrtpContext,
    ) -> int:
        """Hand both sockets' reading to the worker, with the call's SRTP sessions
        (lent, not copied: until detach, ``srtp`` runs through the worker). Sockets
        and addresses are IPv4 or IPv6, each address of its socket's family."""
        loan = _Loan(self)
        tx, rx = srtp.lend(loan)
        try:
            with self._mutex:
                handle = int(
                    self._lib.fp_attach(
                        self._live(),
                        phone_fd,
                        pbx_fd,
                        phone_addr[0].encode(),
                        int(phone_addr[1]),
                        pbx_addr[0].encode(),
                        int(pbx_addr[1]),
                        self._ffi.cast("void *", tx),
                        self._ffi.cast("void *", rx),
                    )
                )
                if handle >= 0:
                    loan.handle = handle
                    self._loans[handle] = srtp
        except BaseException:
            srtp.take_back()
            raise
        if handle < 0:
            srtp.take_back()
            raise OSError(f"fast path attach failed: {_ATTACH_ERRORS.get(handle, handle)}")
        return handle

    def _srtp(self, handle: int, op: Op, packet: bytes) -> tuple[int, bytes]:
        """One use of an attached call's sessions, under the worker's lock."""
        size = len(packet)
        with self._mutex:
            fp = self._fp
            if fp is None:
                return -1, b""
            self._ffi.memmove(self._sbuf, packet, min(size, 1500))
            self._slen[0] = size
            status = int(self._lib.fp_srtp(fp, handle, int(op), self._sbuf, self._slen))
            if status != STATUS_OK:
                return status, b""
            return STATUS_OK, self._ffi.buffer(self._sbuf, self._slen[0])[:]

    def set_phone(self, handle: int, phone_addr: tuple[str, int]) -> None:
        """Move the call's phone latch (the caller checked the packet that moved it)."""
        with self._mutex:
            status = self._lib.fp_set_phone(
                self._live(), handle, phone_addr[0].encode(), int(phone_addr[1])
            )
        if status == -2:
            raise KeyError(handle)
        if status != 0:
            raise ValueError(f"not an address of the call's family: {phone_addr!r}")

    def _counters(self) -> dict[str, int]:
        return {name: int(self._out[i]) for i, name in enumerate(self._names)}

    def detach(self, handle: int) -> dict[str, int]:
        """Stop forwarding; the worker no longer touches the fds or the call's SRTP
        sessions when this returns (they are Python's again, state and all)."""
        with self._mutex:
            if self._lib.fp_detach(self._live(), handle, self._out) != 0:
                raise KeyError(handle)
            srtp = self._loans.pop(handle, None)
            if srtp is not None:
                srtp.take_back()
            return self._counters()

    def stats(self, handle: int) -> dict[str, int]:
        with self._mutex:
            if self._lib.fp_stats(self._live(), handle, self._out) != 0:
                raise KeyError(handle)
            return self._counters()

    def punt_fd(self) -> int:
        """Readable (eventfd) when punted datagrams wait; read_punted() clears it."""
        self._live()
        return self._punt_fd

    def read_punted(self) -> list[tuple[int, bytes, tuple[str, int], str]]:
        """Drain the punt queue: (handle, datagram, source address, "phone" | "pbx")."""
        result: list[tuple[int, bytes, tuple[str, int], str]] = []
        with self._mutex:
            fp = self._live()
            with contextlib.suppress(BlockingIOError):
                os.read(self._punt_fd, 8)
            while True:
                n = self._lib.fp_punt_pop(
                    fp,
                    self._handle,
                    self._dir,
                    self._buf,
                    2048,
                    self._ip,
                    self._ip_max,
                    self._port,
                )
                if n < 0:
                    return result
                result.append(
                    (
                        int(self._handle[0]),
                        bytes(self._ffi.buffer(self._buf, n)),
                        (self._ffi.string(self._ip).decode(), int(self._port[0])),
                        "pbx" if self._dir[0] else "phone",
                    )
                )

    def close(self) -> None:
        """Stop the worker and give every call's sessions back (the fds stay open);
        idempotent."""
        with self._mutex:
            fp, self._fp = self._fp, None
            if fp is not None:
                self._lib.fp_close(fp)
            loans, self._loans = self._loans, {}
        for srtp in loans.values():
            srtp.take_back()

    def __enter__(self) -> FastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fp", None) is not None:
            self.close()
