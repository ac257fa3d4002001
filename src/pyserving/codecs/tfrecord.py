"""TFRecord framing: the file format of request logs and warmup files, without TensorFlow.

Each record is ``uint64 length (little-endian) | uint32 masked crc32c(length) | data |
uint32 masked crc32c(data)``, as tensorflow/core/lib/io/record_writer.cc writes it (no
compression). The CRC comes from google-crc32c (Google's C implementation, with a pure-Python
fallback), so the request logger's thread and the warmup-from-log command need no TensorFlow.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator

import google_crc32c

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
HEADER_BYTES = _LENGTH.size + _CRC.size
FOOTER_BYTES = _CRC.size


class TFRecordError(ValueError):
    """A record that is cut short or whose checksum does not match."""


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record, framed: what a TFRecord file holds for ``data``."""
    length = _LENGTH.pack(len(data))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), data, _CRC.pack(masked_crc32c(data))))


def framed_size(data_bytes: int) -> int:
    return HEADER_BYTES + data_bytes + FOOTER_BYTES


def read_records(stream: BinaryIO, name: str = "TFRecord", size: int | None = None) -> Iterator[bytes]:
    """Every record's data, checksums checked; TFRecordError names the first bad record.

    ``size``, the bytes the stream holds: a record declaring more than remain is refused before
    anything is allocated for it (a hostile header can declare 2^64 - 1 bytes)."""
    index = 0
    remaining = size
    while True:
        header = stream.read(HEADER_BYTES)
        if not header:
            return
        if len(header) < HEADER_BYTES:
            raise TFRecordError(f"{name}: record {index} is truncated (partial header)")
        length_bytes, (length_crc,) = header[:_LENGTH.size], _CRC.unpack(header[_LENGTH.size:])
        if masked_crc32c(length_bytes) != length_crc:
            raise TFRecordError(f"{name}: record {index} has a corrupt length (checksum mismatch)")
        (length,) = _LENGTH.unpack(length_bytes)
        if remaining is not None:
            remaining -= HEADER_BYTES
            if length + FOOTER_BYTES > remaining:
                raise TFRecordError(f"{name}: record {index} declares {length} bytes, "
                                    f"more than the {max(remaining - FOOTER_BYTES, 0)} left in the file")
            remaining -= length + FOOTER_BYTES
        data = stream.read(length)
        footer = stream.read(FOOTER_BYTES)
        if len(data) < length or len(footer) < FOOTER_BYTES:
            raise TFRecordError(f"{name}: record {index} is truncated")
        if masked_crc32c(data) != _CRC.unpack(footer)[0]:
            raise TFRecordError(f"{name}: record {index} is corrupt (data checksum mismatch)")
        yield data
        index += 1


def read_file(path: str, name: str = "") -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from read_records(f, name or path, os.fstat(f.fileno()).st_size)
