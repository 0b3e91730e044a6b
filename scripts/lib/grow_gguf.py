#!/usr/bin/env python3
"""Writes a larger GGUF model from a real one, for benchmarks that need files of several sizes:
every transformer layer repeated FACTOR times (blk.N of the output is blk.(N % L) of the input),
block_count scaled to match, the other tensors as they are. The output is a valid model (it
loads and runs; its answers are not meant to make sense).

Usage: grow_gguf.py IN.gguf OUT.gguf FACTOR
"""
import re
import struct
import sys

SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def main():
    src, dst, factor = sys.argv[1], sys.argv[2], int(sys.argv[3])
    f = open(src, "rb")
    magic, version, n_tensors, n_kv = struct.unpack("<IIQQ", f.read(24))
    assert magic == 0x46554747, "not a GGUF file"

    def string():
        n, = struct.unpack("<Q", f.read(8))
        return f.read(n)

    def skip_value(t):
        if t == 8:
            string()
        elif t == 9:
            at, n = struct.unpack("<IQ", f.read(12))
            for _ in range(n):
                skip_value(at)
        else:
            f.read(SIZES[t])

    kvs = []  # (key, raw bytes of the whole pair)
    alignment, layers = 32, None
    for _ in range(n_kv):
        start = f.tell()
        key = string().decode()
        t, = struct.unpack("<I", f.read(4))
        vstart = f.tell()
        skip_value(t)
        end = f.tell()
        f.seek(vstart)
        raw_value = f.read(end - vstart)
        if key == "general.alignment":
            alignment = struct.unpack("<I", raw_value)[0]
        if key.endswith(".block_count"):
            layers = struct.unpack("<I", raw_value)[0] if t == 4 else struct.unpack("<Q", raw_value)[0]
            raw_value = struct.pack("<I" if t == 4 else "<Q", layers * factor)
        kb = key.encode()
        kvs.append(struct.pack("<Q", len(kb)) + kb + struct.pack("<I", t) + raw_value)
    assert layers, "no block_count"
    infos = []
    for _ in range(n_tensors):
        name = string().decode()
        nd, = struct.unpack("<I", f.read(4))
        dims = struct.unpack(f"<{nd}Q", f.read(8 * nd))
        t, off = struct.unpack("<IQ", f.read(12))
        infos.append([name, dims, t, off])
    data_start = (f.tell() + alignment - 1) // alignment * alignment
    f.seek(0, 2)
    file_len = f.tell()
    by_offset = sorted(infos, key=lambda i: i[3])
    size = {}
    for i, info in enumerate(by_offset):
        nxt = by_offset[i + 1][3] if i + 1 < len(by_offset) else file_len - data_start
        size[info[0]] = nxt - info[3]
    out_infos = []
    for name, dims, t, off in infos:
        m = re.match(r"blk\.(\d+)\.(.*)", name)
        if not m:
            out_infos.append((name, dims, t, off, size[name]))
    for n in range(layers * factor):
        for name, dims, t, off in infos:
            m = re.match(r"blk\.(\d+)\.(.*)", name)
            if m and int(m.group(1)) == n % layers:
                out_infos.append((f"blk.{n}.{m.group(2)}", dims, t, off, size[name]))
    header = struct.pack("<IIQQ", magic, version, len(out_infos), n_kv) + b"".join(kvs)
    placed, cursor = [], 0
    for name, dims, t, off, sz in out_infos:
        nb = name.encode()
        header += struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(dims))
        header += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", t, cursor)
        placed.append((off, sz))
        cursor += (sz + alignment - 1) // alignment * alignment
    header += b"\0" * ((len(header) + alignment - 1) // alignment * alignment - len(header))
    with open(dst, "wb") as out:
        out.write(header)
        for off, sz in placed:
            f.seek(data_start + off)
            out.write(f.read(sz))
            out.write(b"\0" * ((sz + alignment - 1) // alignment * alignment - sz))


main()
