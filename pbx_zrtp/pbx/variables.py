"""What a call report shows the dialplan, and under which names each PBX shows it.

``CallView`` is computed once from a relay report, the same for every PBX; a
``VariableTable`` then names each of its fields for one PBX, in the order they are
written (the state last, so a dialplan waiting on it wakes to a complete picture),
with that PBX's spelling of true and false.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from pbx_zrtp.calls import CallReport, CallState, Policy


def legacy_sas(sas: str, sas_type: str) -> tuple[str, str]:
    """FreeSWITCH's old zrtp_sas1/zrtp_sas2: B256 gave one word each, B32 all in sas1."""
    if sas_type == "B256" and " " in sas:
        first, second = sas.split(" ", 1)
        return first, second
    return sas, ""


@dataclass(frozen=True)
class CallView:
    """The dialplan's view of a report: the SAS and its details only once secure,
    the failure reason only when the call failed or went clear."""

    policy: str  # the policy in force (a dialplan's request may have been "auto")
    secure: bool
    sas: str
    sas_type: str
    sas_verified: bool
    cache_mismatch: bool
    cipher: str
    auth_tag: str
    key_agreement: str
    #: Post-quantum key agreement (an X25519/X448 + ML-KEM hybrid).
    pq: bool
    hash: str
    peer_zid: str
    fail_reason: str
    #: Trusted MiTM (docs/trusted-mitm.md): is the phone enrolled with this PBX, and
    #: does the far end of a bridged call read the same SAS (end-to-end) or not.
    enrolled: bool
    sas_scope: str
    displayed_sas: str
    sas_relay: str
    #: Secure, but key continuity was not saved (disk full, database down).
    cache_error: str
    #: The call's video stream (Multistream): "" without one, else its state.
    video_secure: bool
    video_fail_reason: str
    video_state: str
    #: Pending: whole seconds the dialplan should hold the call for the relay's decision
    #: (the relay's time-out left, plus 1 s for the write); "" once decided.
    timeout: str
    state: str
    #: The SAS split as FreeSWITCH's removed built-in ZRTP showed it.
    sas1: str
    sas2: str

    @classmethod
    def of(cls, report: CallReport, policy: Policy) -> CallView:
        secure = report.state is CallState.SECURE
        sas = report.sas if secure else ""
        sas_type = report.sas_type if secure else ""
        sas1, sas2 = legacy_sas(sas, sas_type)
        failed = report.state in (CallState.FAILED, CallState.CLEAR)
        video = report.stream("video")
        video_failed = video is not None and video.state in (CallState.FAILED, CallState.CLEAR)
        return cls(
            policy=policy.value,
            secure=secure,
            sas=sas,
            sas_type=sas_type,
            sas_verified=secure and report.sas_verified,
            cache_mismatch=report.cache_mismatch,
            cipher=report.cipher,
            auth_tag=report.auth_tag,
            key_agreement=report.key_agreement,
            pq=secure and report.pq,
            hash=report.hash,
            peer_zid=report.peer_zid,
            fail_reason=report.reason if failed else "",
            enrolled=report.enrolled,
            sas_scope=report.sas_scope if secure else "",
            displayed_sas=report.displayed_sas if secure else "",
            sas_relay=report.sas_relay if secure else "",
            cache_error=report.cache_error,
            video_secure=video is not None and video.secure,
            video_fail_reason=video.reason if video is not None and video_failed else "",
            video_state=video.state.value if video is not None else "",
            timeout=_timeout(report),
            state=report.state.value,
            sas1=sas1,
            sas2=sas2,
        )


def _timeout(report: CallReport) -> str:
    if report.state is not CallState.PENDING or report.decides_in is None:
        return ""
    return str(math.ceil(report.decides_in) + 1)


_VIEW_FIELDS = frozenset(f.name for f in fields(CallView))


@dataclass(frozen=True)
class VariableTable:
    """One PBX's names for the view's fields, in write order (a field may appear
    under several names; ``state`` must come last)."""

    names: tuple[tuple[str, str], ...]  # (CallView field, PBX variable)
    true: str
    false: str

    def __post_init__(self) -> None:
        unknown = {view for view, _ in self.names} - _VIEW_FIELDS
        if unknown:
            raise ValueError(f"not CallView fields: {sorted(unknown)}")
        if not self.names or self.names[-1][0] != "state":
            raise ValueError("the state variable must be written last")

    def name_of(self, view_field: str) -> str:
        """The (first) variable showing ``view_field``."""
        for view, name in self.names:
            if view == view_field:
                return name
        raise KeyError(view_field)

    @property
    def state(self) -> str:
        return self.names[-1][1]

    def render(self, view: CallView) -> dict[str, str]:
        """Every variable's value (all always present, in write order)."""
        out: dict[str, str] = {}
        for field, name in self.names:
            value = getattr(view, field)
            out[name] = (self.true if value else self.false) if isinstance(value, bool) else value
        return out
