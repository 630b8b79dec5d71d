"""cffi (API mode) build of the native worker, ``_fastpath.c``, when the package is built.

``setup.py`` names :func:`ffibuilder` in ``cffi_modules``: building the wheel (or
``pip install`` from the sdist or a checkout) compiles ``_fastpath.c`` into the
extension module ``pbx_zrtp.relay._fastpath_lib``, so an installed relay never
needs a compiler. The module needs only libsrtp2's *headers* at build time: it
calls the libsrtp inside pylibsrtp's wheel, whose functions ``fp_init`` takes with
dlsym at run time (one SRTP state per call, OpenSSL's AES and HMAC).

This file imports nothing from the package: cffi runs it on its own, before
``pbx_zrtp`` is importable. ``fastpath.py`` reads :data:`CDEF` too, for the
sanitizer build it compiles for the tests (``PBX_ZRTP_FASTPATH_SANITIZE``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

#: The built module's import name.
MODULE = "pbx_zrtp.relay._fastpath_lib"
SOURCE_NAME = "_fastpath.c"

#: What Python calls in the worker (the same for the built module and the
#: sanitizer build).
CDEF = """
typedef struct fp fp_t;
int fp_init(const char *srtp_lib);
const char *fp_backend(void);
const char *fp_build(void);
const char *fp_counter_names(void);
int fp_counter_count(void);
int fp_is_rtcp(const uint8_t *p, int len);
int fp_ip_max(void);
fp_t *fp_create(void);
int fp_punt_fd(fp_t *fp);
int64_t fp_attach(fp_t *fp, int phone_fd, int pbx_fd, const char *phone_ip, int phone_port,
                  const char *pbx_ip, int pbx_port, void *tx, void *rx);
int fp_srtp(fp_t *fp, int64_t handle, int op, uint8_t *buf, int *len);
int fp_set_phone(fp_t *fp, int64_t handle, const char *ip, int port);
int fp_stats(fp_t *fp, int64_t handle, uint64_t *out);
int fp_detach(fp_t *fp, int64_t handle, uint64_t *out);
int fp_punt_pop(fp_t *fp, int64_t *handle, int *dir, uint8_t *buf, int cap, char *ip, int ipcap,
                int *port);
void fp_close(fp_t *fp);
"""

#: Only in the built module: the SHA-256 of the ``_fastpath.c`` it was built from,
#: so a checkout whose C changed since ``pip install -e .`` is told to rebuild.
CDEF_BUILT = "const char *fp_source_sha256(void);\n"


def source_digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()


def ffibuilder() -> Any:
    """The FFI that ``cffi_modules`` builds (``setup.py``)."""
    import cffi

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, SOURCE_NAME), "rb") as handle:
        digest = source_digest(handle.read())
    ffi = cffi.FFI()
    ffi.cdef(CDEF + CDEF_BUILT)
    ffi.set_source(
        MODULE,
        # Python.h (included first by cffi) defines _GNU_SOURCE already;
        # _fastpath.c defines it again for its own standalone builds.
        "#undef _GNU_SOURCE\n"
        f'#include "{SOURCE_NAME}"\n'
        f'const char *fp_source_sha256(void) {{ return "{digest}"; }}\n',
        include_dirs=[here],
        libraries=["pthread", "dl"],
        extra_compile_args=["-std=gnu11", "-O2"],
        depends=[os.path.join(here, SOURCE_NAME)],
    )
    return ffi
