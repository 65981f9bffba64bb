#!/usr/bin/env python3
"""Copy a GGUF keeping only its first K blocks (plus every non-block tensor), so that a
`train --llm-layers K` input fits the device tool's 64 MiB transfer. Metadata (vocabulary, merges,
llama.block_count) and every kept tensor's bytes are copied unchanged.

usage: trim_gguf.py IN.gguf OUT.gguf K
"""
import struct
import sys

from gguf import GGUFReader


def main(src, dst, keep):
    raw = open(src, "rb").read()
    reader = GGUFReader(src)
    last = list(reader.fields.values())[-1]
    pos = last.offset + sum(p.nbytes for p in last.parts)
    align = int(reader.fields["general.alignment"].parts[-1][0]) if "general.alignment" in reader.fields else 32
    (n_tensors,) = struct.unpack_from("<Q", raw, 8)
    infos = []
    for _ in range(n_tensors):
        start = pos
        (n,) = struct.unpack_from("<Q", raw, pos)
        name = raw[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (dims,) = struct.unpack_from("<I", raw, pos)
        pos += 4 + 8 * dims + 4
        (offset,) = struct.unpack_from("<Q", raw, pos)
        pos += 8
        infos.append((name, raw[start : pos - 8], offset))
    data_start = (pos + align - 1) // align * align
    sizes = {t.name: t.n_bytes for t in reader.tensors}

    def kept(name):
        return not name.startswith("blk.") or int(name.split(".")[1]) < keep

    infos = [i for i in infos if kept(i[0])]
    head = bytearray(raw[: last.offset + sum(p.nbytes for p in last.parts)])
    struct.pack_into("<Q", head, 8, len(infos))
    data = bytearray()
    for name, info, offset in infos:
        data += b"\0" * (-len(data) % align)
        head += info + struct.pack("<Q", len(data))
        data += raw[data_start + offset : data_start + offset + sizes[name]]
    head += b"\0" * (-len(head) % align)
    open(dst, "wb").write(bytes(head + data))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
