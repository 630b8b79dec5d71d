"""The private parts of dependencies pbx_zrtp relies on, checked against what is
installed: when a release moves them this fails loudly here, instead of a call
failing quietly in production. Each is wrapped in one place (srtp.py for
pylibsrtp, freeswitch/esl.py for greenswitch) and pinned in pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import pathlib

import pylibsrtp
import pytest

from pbx_zrtp import srtp

#: Versions whose private parts were checked (pyproject.toml pins the same).
CHECKED = {"pylibsrtp": "1.0.", "greenswitch": "0.0.19"}


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_installed_versions_are_the_checked_ones(name: str) -> None:
    installed = importlib.metadata.version(name)
    assert installed.startswith(CHECKED[name]), (
        f"{name} {installed} is not a version whose private parts pbx_zrtp uses were"
        f" checked ({CHECKED[name]}*): check the wrappers, then move the pin and CHECKED"
    )


def test_pylibsrtp_policy_exposes_its_c_policy_with_an_rtcp_half() -> None:
    policy = pylibsrtp.Policy(
        key=bytes(30),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    )
    c_policy = srtp._c_policy(policy)
    rtcp = pylibsrtp.ffi.addressof(c_policy.rtcp)
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32
    # srtp.py sets the 32-bit tag on SRTCP too, as phones use it (tests/test_srtp.py
    # checks that SRTCP then interoperates)
    assert pylibsrtp.lib.srtp_crypto_policy_set_from_profile_for_rtp(rtcp, profile) == 0


def test_pylibsrtp_binding_is_a_shared_object_the_fast_path_can_open() -> None:
    path = pathlib.Path(srtp.libsrtp_path())
    assert path.is_file() and path.suffix == ".so", path


def test_greenswitch_connection_has_the_private_parts_esl_py_uses() -> None:
    from greenswitch.esl import InboundESL

    from pbx_zrtp.freeswitch import esl

    connection = InboundESL("127.0.0.1", 1, "ClueCon")
    assert connection._run is True  # abandon() clears it to stop the reader's loop
    assert connection._commands_sent == []  # fail_sent_commands() empties it
    assert connection._receive_events_greenlet is None  # reader_died() watches it
    assert not esl.reader_died(connection)

    class Pending:
        error: Exception | None = None

        def set_exception(self, error: Exception) -> None:
            self.error = error

    pending = Pending()
    connection._commands_sent.append(pending)
    esl.fail_sent_commands(connection, ConnectionError("lost"))
    assert isinstance(pending.error, ConnectionError)
    esl.abandon(connection)  # no socket yet: nothing to close, must not raise
    assert connection._run is False
