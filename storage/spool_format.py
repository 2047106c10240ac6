"""The spool's on-disk format: the record header, encoding, and the scan that finds the good records of a segment."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

HEADER = struct.Struct("<IIQBQ")  # length, crc32, seq, signal, received_unix_nano


_CRC_OFFSET = 8  # the CRC covers the header from `seq` on, plus the payload


MAX_RECORD_BYTES = 1 << 30


SIGNALS = ("logs", "traces", "metrics")


SUFFIX = ".seg"


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    seq: int
    signal: str
    received_unix_nano: int
    payload: bytes


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def encode(seq: int, signal: str, received_unix_nano: int, payload: bytes) -> bytes:
    """One record as bytes (header + payload)."""
    tail = HEADER.pack(len(payload), 0, seq, SIGNALS.index(signal), received_unix_nano)[_CRC_OFFSET:]
    crc = zlib.crc32(payload, zlib.crc32(tail))
    return HEADER.pack(len(payload), crc, seq, SIGNALS.index(signal), received_unix_nano) + payload


def scan(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """The good records of a segment's bytes as (seq, offset, size), and the byte length of the good prefix."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos + HEADER.size <= len(data):
        length, crc, seq, sig, _ = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data) or sig >= len(SIGNALS):
            break
        if (
            zlib.crc32(data[pos + HEADER.size : end], zlib.crc32(data[pos + _CRC_OFFSET : pos + HEADER.size]))
            != crc
        ):
            break
        if out and seq != out[-1][0] + 1:
            break
        out.append((seq, pos, end - pos))
        pos = end
    return out, pos
