"""Native fast path for the steady state of a secured call (experimental).

``_fastpath.c`` (next to this file) is compiled with gcc against libsrtp2 on
first use into a cache directory, keyed by a hash of the source and the flags,
and loaded with cffi in ABI mode. One :class:`FastPath` runs one native worker
thread (epoll, ``recvmmsg``/``sendmmsg``, libsrtp2) that forwards the RTP of
many calls; what it does not handle (ZRTP, RTCP, STUN, packets from other
sources on the phone side) is queued for Python ("punted").

Which libsrtp does the crypto: by default the one bundled in pylibsrtp's wheel
(OpenSSL's AES and HMAC, ~2.5 µs per packet), whose functions the library
takes with dlsym; Debian's libsrtp2 (which the library is linked against, and
whose headers it is compiled with) uses NSS and costs several times more. Set
``PBX_ZRTP_FASTPATH_SRTP=system`` to use the system one, or a path to another
libsrtp 2.x build.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pathlib
import shutil
import subprocess
import threading
from typing import Any

# cffi ships no type stubs (and the project does not depend on types-cffi)
cffi: Any = importlib.import_module("cffi")

_SOURCE = pathlib.Path(__file__).with_name("_fastpath.c")

_CDEF = """
typedef struct fp fp_t;
int fp_init(const char *srtp_lib);
const char *fp_backend(void);
const char *fp_counter_names(void);
int fp_counter_count(void);
fp_t *fp_create(void);
int fp_punt_fd(fp_t *fp);
int64_t fp_attach(fp_t *fp, int phone_fd, int pbx_fd, const char *phone_ip, int phone_port,
                  const char *pbx_ip, int pbx_port, int hs32, const uint8_t *tx_key,
                  const uint8_t *rx_key);
int fp_stats(fp_t *fp, int64_t handle, uint64_t *out);
int fp_detach(fp_t *fp, int64_t handle, uint64_t *out);
int fp_punt_pop(fp_t *fp, int64_t *handle, int *dir, uint8_t *buf, int cap, char *ip, int *port);
void fp_close(fp_t *fp);
"""

_ATTACH_ERRORS = {
    -1: "bad arguments (fds or addresses)",
    -2: "libsrtp refused the keys",
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


def _flags() -> list[str]:
    if shutil.which("pkg-config"):
        proc = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "libsrtp2"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode == 0:
            return proc.stdout.split()
    return ["-lsrtp2"]


def _build() -> pathlib.Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise OSError("no C compiler (gcc) on PATH")
    flags = [*_flags(), "-lpthread", "-ldl"]
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if out_dir.stat().st_uid != os.getuid():
        raise OSError(f"{out_dir} is not owned by this user")
    lib = out_dir / f"_fastpath-{digest}.so"
    if lib.is_file():
        return lib
    tmp = out_dir / f"_fastpath-{digest}.{os.getpid()}.tmp"
    cmd = [gcc, "-O2", "-std=gnu11", "-shared", "-fPIC", "-o", str(tmp), str(_SOURCE), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        hint = " (apt-get install libsrtp2-dev)" if "srtp2/srtp.h" in proc.stderr else ""
        raise OSError(f"compiling _fastpath.c failed{hint}: {proc.stderr.strip()[-1500:]}")
    os.replace(tmp, lib)
    for stale in out_dir.glob("_fastpath-*.so"):  # older sources (unlinking a mapped .so is safe)
        if stale != lib:
            stale.unlink(missing_ok=True)
    return lib


def _srtp_library() -> str:
    """The libsrtp whose functions the worker calls ("" = the system libsrtp2)."""
    choice = os.environ.get("PBX_ZRTP_FASTPATH_SRTP", "")
    if choice == "system":
        return ""
    if choice:
        return choice
    from pbx_zrtp.srtp import libsrtp_path

    try:  # loaded already by pbx_zrtp.srtp: dlopen returns the same mapping
        return libsrtp_path()
    except ImportError:
        return ""


def _load() -> tuple[Any, Any]:
    global _loaded, _load_error
    with _lock:
        if _loaded is not None:
            return _loaded
        if _load_error is not None:
            raise OSError(_load_error)
        try:
            path = _build()
            ffi = cffi.FFI()
            ffi.cdef(_CDEF)
            lib = ffi.dlopen(str(path))
            status = lib.fp_init(_srtp_library().encode())
            if status != 0:
                raise OSError(f"fp_init failed ({status}): cannot use {_srtp_library()!r}")
        except (OSError, subprocess.SubprocessError) as exc:
            _load_error = str(exc) or type(exc).__name__
            raise OSError(_load_error) from exc
        _loaded = (ffi, lib)
        return _loaded


def backend() -> str:
    """Which libsrtp the worker uses (a path, or "system libsrtp2")."""
    ffi, lib = _load()
    return str(ffi.string(lib.fp_backend()).decode())


def available() -> str | None:
    """None if the fast path can be used here, else why not."""
    try:
        _load()
    except OSError as exc:
        return str(exc)
    return None


class FastPath:
    """One native worker thread (epoll) forwarding secured RTP for many calls."""

    def __init__(self) -> None:
        self._ffi, self._lib = _load()
        self._names = self._ffi.string(self._lib.fp_counter_names()).decode().split(",")
        self._count = int(self._lib.fp_counter_count())
        self._mutex = threading.Lock()
        fp = self._lib.fp_create()
        if fp == self._ffi.NULL:
            raise OSError("fp_create failed (srtp_init, epoll, eventfd or thread)")
        self._fp: Any = fp
        self._punt_fd = int(self._lib.fp_punt_fd(fp))
        self._buf = self._ffi.new("uint8_t[]", 2048)
        self._ip = self._ffi.new("char[]", 16)
        self._out = self._ffi.new("uint64_t[]", self._count)
        self._handle = self._ffi.new("int64_t *")
        self._dir = self._ffi.new("int *")
        self._port = self._ffi.new("int *")

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
        auth_tag: str,
        tx_key: bytes,
        rx_key: bytes,
    ) -> int:
        """Hand both sockets' reading to the worker; returns the call's handle."""
        if auth_tag not in ("HS80", "HS32"):
            raise ValueError(f"unsupported auth tag {auth_tag!r}")
        if len(tx_key) != 30 or len(rx_key) != 30:
            raise ValueError("tx_key and rx_key must be 30 bytes (16-byte key + 14-byte salt)")
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
                    1 if auth_tag == "HS32" else 0,
                    tx_key,
                    rx_key,
                )
            )
        if handle < 0:
            raise OSError(f"fast path attach failed: {_ATTACH_ERRORS.get(handle, handle)}")
        return handle

    def _counters(self) -> dict[str, int]:
        return {name: int(self._out[i]) for i, name in enumerate(self._names)}

    def detach(self, handle: int) -> dict[str, int]:
        """Stop forwarding; the worker no longer touches the fds when this returns."""
        with self._mutex:
            if self._lib.fp_detach(self._live(), handle, self._out) != 0:
                raise KeyError(handle)
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
                    fp, self._handle, self._dir, self._buf, 2048, self._ip, self._port
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
        """Stop the worker and free every call's sessions (the fds stay open); idempotent."""
        with self._mutex:
            fp, self._fp = self._fp, None
            if fp is not None:
                self._lib.fp_close(fp)

    def __enter__(self) -> FastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fp", None) is not None:
            self.close()
