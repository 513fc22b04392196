#!/usr/bin/env python3
"""Independent Avro decoder for records framed with Avro single-object encoding.

Decodes record values with fastavro (not the Rust `apache-avro` crate the pipeline uses),
from the schema files alone, so a test can check that any Avro library reads what the
pipeline writes.

Input: one hex-encoded record value per line (blank lines ignored), on stdin or --input FILE.
Each value is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the writer
schema's Parsing Canonical Form, then the binary datum. The writer schema is picked by that
fingerprint among every `*.avsc` in --schemas DIR.

Output: one JSON line per record, in input order:
    {"record": "<record name without namespace>", "datum": {...}}
Bytes are written as {"$bytes": "<hex>"}; timestamps as ISO-8601 UTC text with milliseconds
(e.g. 2025-11-28T14:26:40.000Z), other dates/times as ISO-8601 text; decimals and UUIDs as
text.

With --fingerprints, prints `<hex fingerprint> <file>` for every schema and exits.

Exit status: 0 when every record decoded; 1 with a message on stderr otherwise.
"""

import argparse
import datetime
import decimal
import io
import json
import os
import sys
import uuid

try:
    import fastavro
    import fastavro.schema
except ImportError:
    sys.stderr.write(
        "avro_decode.py: the Python package fastavro is missing; "
        "run `python3 -m pip install fastavro`\n"
    )
    sys.exit(1)

MAGIC = b"\xc3\x01"

# CRC-64-AVRO, as given in the Avro specification ("Schema Fingerprints").
EMPTY64 = 0xC15D213AA4D7A795
_FP_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (EMPTY64 & -(_fp & 1))
    _FP_TABLE.append(_fp)


def crc64_avro(data):
    """The 64-bit Rabin fingerprint of `data` (bytes), as an unsigned int."""
    fp = EMPTY64
    for b in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ b) & 0xFF]
    return fp


class DecodeError(Exception):
    pass


def fingerprint_of(parsed, path):
    """The single-object header fingerprint (8 bytes, little-endian) of a parsed schema.

    Computed with our own CRC-64-AVRO over fastavro's Parsing Canonical Form, and cross-checked
    against fastavro's own fingerprint when it offers one.
    """
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    ours = crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")
    fastavro_fp = getattr(fastavro.schema, "fingerprint", None)
    if fastavro_fp is not None:
        theirs = fastavro_fp(canonical, "CRC-64-AVRO")
        if theirs != ours.hex():
            raise DecodeError(
                f"{path}: CRC-64-AVRO mismatch: ours {ours.hex()}, fastavro {theirs}"
            )
    return ours


def load_schemas(directory):
    """{fingerprint bytes: (file name, parsed schema)} for every *.avsc in `directory`."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".avsc"))
    except OSError as e:
        raise DecodeError(f"cannot list schema directory {directory}: {e}")
    if not names:
        raise DecodeError(f"no *.avsc files in {directory}")
    out = {}
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                parsed = fastavro.schema.parse_schema(json.load(f))
        except Exception as e:  # noqa: BLE001 - report any parse failure with its file
            raise DecodeError(f"{path}: not a valid Avro schema: {e}")
        fp = fingerprint_of(parsed, path)
        if fp in out:
            raise DecodeError(
                f"{path} and {out[fp][0]} have the same fingerprint {fp.hex()}"
            )
        out[fp] = (name, parsed)
    return out


def short_name(name):
    return name.rsplit(".", 1)[-1]


def read_long(buf):
    """The zig-zag varint at the start of `buf` (an Avro long)."""
    shift = 0
    acc = 0
    for i, b in enumerate(buf):
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1)
        shift += 7
        if i >= 9:
            break
    raise DecodeError("truncated or overlong union index")


def decode_value(value, schemas):
    """(record name, datum) of one framed record value."""
    if len(value) < 10:
        raise DecodeError(f"{len(value)} bytes: too short for a single-object header")
    if value[:2] != MAGIC:
        raise DecodeError(f"bad magic {value[:2].hex()} (expected c301)")
    fp = value[2:10]
    if fp not in schemas:
        known = ", ".join(f"{k.hex()} ({v[0]})" for k, v in sorted(schemas.items()))
        raise DecodeError(f"unknown writer schema fingerprint {fp.hex()}; known: {known}")
    file_name, parsed = schemas[fp]
    datum = value[10:]
    bio = io.BytesIO(datum)
    try:
        decoded = fastavro.schemaless_reader(
            bio,
            parsed,
            return_record_name=True,
            return_record_name_override=True,
        )
    except Exception as e:  # noqa: BLE001 - any failure is a decode error of this record
        raise DecodeError(f"datum does not decode with {file_name}: {e!r}")
    rest = len(datum) - bio.tell()
    if rest != 0:
        raise DecodeError(f"{rest} trailing byte(s) after the datum ({file_name})")
    if isinstance(parsed, list):
        # A top-level union: fastavro names the branch; check it against the union index.
        if not (isinstance(decoded, tuple) and len(decoded) == 2):
            raise DecodeError(f"expected a named union branch, got {type(decoded).__name__}")
        name, record = decoded
        index = read_long(datum)
        branch = parsed[index] if 0 <= index < len(parsed) else None
        branch_name = branch.get("name") if isinstance(branch, dict) else branch
        if branch_name != name:
            raise DecodeError(f"union index {index} is {branch_name}, fastavro said {name}")
        return short_name(name), record
    if isinstance(parsed, dict) and "name" in parsed:
        return short_name(parsed["name"]), decoded
    return str(parsed.get("type") if isinstance(parsed, dict) else parsed), decoded


def to_json(o):
    if isinstance(o, (bytes, bytearray)):
        return {"$bytes": bytes(o).hex()}
    if isinstance(o, datetime.datetime) and o.tzinfo is not None:
        # timestamp-millis/-micros: ISO-8601 UTC, milliseconds (microseconds when present).
        u = o.astimezone(datetime.timezone.utc)
        frac = f"{u.microsecond:06d}" if u.microsecond % 1000 else f"{u.microsecond // 1000:03d}"
        return u.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"
    if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
        return o.isoformat()
    if isinstance(o, (decimal.Decimal, uuid.UUID)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot JSON-encode {type(o).__name__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemas", required=True, help="directory of *.avsc files")
    ap.add_argument("--input", help="file of hex-encoded record values (default: stdin)")
    ap.add_argument(
        "--fingerprints", action="store_true", help="print each schema's fingerprint and exit"
    )
    args = ap.parse_args()
    try:
        schemas = load_schemas(args.schemas)
        if args.fingerprints:
            for fp, (name, _) in sorted(schemas.items(), key=lambda kv: kv[1][0]):
                print(f"{fp.hex()} {name}")
            return 0
        if args.input:
            with open(args.input, encoding="ascii") as f:
                lines = f.read().splitlines()
        else:
            lines = sys.stdin.read().splitlines()
        out = []
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                value = bytes.fromhex(line)
            except ValueError as e:
                raise DecodeError(f"line {n}: not hex: {e}")
            try:
                name, datum = decode_value(value, schemas)
            except DecodeError as e:
                raise DecodeError(f"line {n}: {e}")
            out.append(json.dumps({"record": name, "datum": datum}, default=to_json))
        sys.stdout.write("".join(line + "\n" for line in out))
        return 0
    except DecodeError as e:
        sys.stderr.write(f"avro_decode.py: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
