#!/bin/sh
# Build bzrtp with its post-quantum engine from public sources into PREFIX.
#   build_bzrtp_pq.sh PREFIX LINPHONE_SDK_TREE LIBOQS_TREE
# LINPHONE_SDK_TREE holds bctoolbox/, postquantumcryptoengine/ and bzrtp/ (the
# BelledonneCommunications/linphone-sdk repository); LIBOQS_TREE is
# open-quantum-safe/liboqs. Nothing is downloaded; Debian packages needed:
# cmake, g++, libssl-dev, libdecaf-dev (bctoolbox's X25519/X448), libsqlite3-dev.
# Each finished step leaves a stamp in PREFIX/build, so a rerun resumes.
set -eu
PREFIX=$1 SDK=$2 OQS=$3
JOBS=${JOBS:-2}
BUILD=${BUILD_DIR:-$PREFIX/build}
mkdir -p "$BUILD"
cm() {  # cm NAME SRC [cmake args...]
    name=$1 src=$2; shift 2
    [ -e "$BUILD/$name.done" ] && return 0
    rm -rf "${BUILD:?}/$name"
    cmake -S "$src" -B "$BUILD/$name" -DCMAKE_INSTALL_PREFIX="$PREFIX" \
        -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_INSTALL_RPATH="$PREFIX/lib" -DCMAKE_POLICY_VERSION_MINIMUM=3.5 "$@"
    nice -n 19 cmake --build "$BUILD/$name" -j "$JOBS"
    cmake --install "$BUILD/$name"
    touch "$BUILD/$name.done"
}
cm liboqs "$OQS" -DBUILD_SHARED_LIBS=ON -DOQS_BUILD_ONLY_LIB=ON -DOQS_USE_OPENSSL=OFF \
    -DOQS_DIST_BUILD=OFF -DOQS_ENABLE_KEM_HQC=ON \
    -DOQS_MINIMAL_BUILD="KEM_ml_kem_512;KEM_ml_kem_768;KEM_ml_kem_1024;KEM_kyber_512;KEM_kyber_768;KEM_kyber_1024;KEM_hqc_128;KEM_hqc_192;KEM_hqc_256"
cm bctoolbox "$SDK/bctoolbox" -DENABLE_MBEDTLS=OFF -DENABLE_OPENSSL=ON -DENABLE_DECAF=ON \
    -DENABLE_UNIT_TESTS=OFF -DENABLE_TESTS_COMPONENT=OFF -DENABLE_STRICT=OFF \
    -DBUILD_SHARED_LIBS=ON
cm postquantumcryptoengine "$SDK/postquantumcryptoengine" -DENABLE_UNIT_TESTS=OFF -DENABLE_STRICT=OFF \
    -DBUILD_SHARED_LIBS=ON
cm bzrtp "$SDK/bzrtp" -DENABLE_PQCRYPTO=ON -DENABLE_UNIT_TESTS=OFF -DENABLE_STRICT=OFF -DENABLE_ZIDCACHE=ON \
    -DBUILD_SHARED_LIBS=ON
touch "$PREFIX/.pbx-zrtp-interop-build"
