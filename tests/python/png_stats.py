"""Pixel statistics of a PNG, with the standard library only (zlib), for the HTML report test.

    python3 tests/python/png_stats.py SHOT.png '#0072B2' '#009E73' ...

Prints JSON: width, height, distinct colours, the share of pixels that are not (near) white, and
for each colour given the number of pixels within a small distance of it.
"""
import json
import struct
import sys
import zlib


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"error: {path} is not a PNG")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise SystemExit(f"error: unsupported PNG (depth {depth}, colour type {ctype}, interlace {interlace})")
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        f = raw[i]
        line = bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def main():
    path, targets = sys.argv[1], sys.argv[2:]
    width, height, bpp, rows = decode(path)
    want = [tuple(int(t.lstrip("#")[k:k + 2], 16) for k in (0, 2, 4)) for t in targets]
    colours, non_white, hits = set(), 0, [0] * len(want)
    for row in rows:
        for x in range(0, len(row), bpp):
            px = (row[x], row[x + 1], row[x + 2])
            colours.add(px)
            if min(px) < 235:
                non_white += 1
            for k, w in enumerate(want):
                if abs(px[0] - w[0]) + abs(px[1] - w[1]) + abs(px[2] - w[2]) <= 24:
                    hits[k] += 1
    print(json.dumps({
        "width": width,
        "height": height,
        "distinct_colours": len(colours),
        "non_white_share": non_white / float(width * height),
        "colour_pixels": dict(zip(targets, hits)),
    }))


main()
