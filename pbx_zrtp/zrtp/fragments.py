"""Reassembly of fragmented ZRTP messages, in bounded memory.

Post-quantum Commit and DHPart1 (KEMPart1) messages exceed a path MTU, so bzrtp
cuts them into fragments (first byte 0x11, message id, total length, offset,
fragment length, all in words). Fragments arrive lost, reordered, duplicated and
retransmitted (a retransmission keeps the message id, so pieces of two copies
combine). Only a few messages are in flight at once, so a handful of slots is
enough: a new message id evicts the oldest slot, never grows memory. A completed
message leaves its slot; a later retransmission simply completes it again (the
engine answers that as a repeated message, which is what a lost answer needs).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pbx_zrtp.zrtp.packets import CRC_SIZE, HEADER_SIZE, MAX_PACKET_SIZE, Fragment

#: Largest message a reassembled packet may carry (the packet size limit).
MAX_MESSAGE_WORDS = (MAX_PACKET_SIZE - HEADER_SIZE - CRC_SIZE) // 4
#: Messages reassembled at once (per engine): Commit and DHPart1 are never both due.
SLOTS = 2


@dataclass
class _Slot:
    ssrc: int
    message_id: int
    total_words: int
    buffer: bytearray = field(repr=False)
    have: bytearray = field(repr=False)  # one flag per word
    missing: int


class Reassembler:
    """Collects fragments; ``add`` returns the whole message once every word came."""

    def __init__(
        self,
        slots: int = SLOTS,
        max_words: int = MAX_MESSAGE_WORDS,
        stats: Counter[str] | None = None,
    ) -> None:
        if slots < 1 or max_words < 1:
            raise ValueError("need at least one slot and one word")
        self._slots: list[_Slot] = []
        self._max_slots = slots
        self._max_words = max_words
        #: Counters, shared with the engine's when it passes its own.
        self.stats: Counter[str] = Counter() if stats is None else stats

    @property
    def buffered_octets(self) -> int:
        """Memory held for incomplete messages (bounded by slots x max message)."""
        return sum(len(slot.buffer) for slot in self._slots)

    def add(self, fragment: Fragment) -> bytes | None:
        total = fragment.total_words
        if total > self._max_words:
            self.stats["fragment_too_big"] += 1
            return None
        slot = self._find(fragment.ssrc, fragment.message_id)
        if slot is not None and slot.total_words != total:
            self.stats["fragment_inconsistent"] += 1
            return None
        if slot is None:
            if len(self._slots) >= self._max_slots:
                self._slots.pop(0)
                self.stats["fragment_evicted"] += 1
            slot = _Slot(
                fragment.ssrc,
                fragment.message_id,
                total,
                bytearray(total * 4),
                bytearray(total),
                total,
            )
            self._slots.append(slot)
        start = fragment.offset_words
        words = len(fragment.data) // 4
        new = 0
        for index in range(words):
            word = start + index
            piece = fragment.data[index * 4 : index * 4 + 4]
            if slot.have[word]:
                if slot.buffer[word * 4 : word * 4 + 4] != piece:
                    # Overlaps are allowed (an MTU change), contradictions are not:
                    # keep what came first, the message's MACs decide later.
                    self.stats["fragment_conflict"] += 1
                    return None
                continue
            new += 1
        if not new:
            self.stats["fragment_duplicate"] += 1
            return None
        slot.buffer[start * 4 : (start + words) * 4] = fragment.data
        for word in range(start, start + words):
            if not slot.have[word]:
                slot.have[word] = 1
                slot.missing -= 1
        if slot.missing:
            return None
        self._slots.remove(slot)
        self.stats["fragment_reassembled"] += 1
        return bytes(slot.buffer)

    def _find(self, ssrc: int, message_id: int) -> _Slot | None:
        for slot in self._slots:
            if slot.ssrc == ssrc and slot.message_id == message_id:
                return slot
        return None

    def clear(self) -> None:
        self._slots.clear()
