"""Print the IQ lookup tables as C arrays for the policy files in policies/.

The values come from the gguf package (gguf.quants: grid_hex / grid_map of each IQ class and
IQ2_XXS.ksigns) and are emitted in llama.cpp's layout: grid entry i is one uint64_t (8 weights)
or uint32_t (4 weights) whose byte j is weight j (little endian); IQ1 grids hold int8 -1/0/1.

    python tools/gen_iq_grids.py iq2_xxs        # tables for one format, prefixed by its name
    python tools/gen_iq_grids.py                # every format
"""
import sys

import numpy as np
from gguf import quants

FORMATS = {
    # format: (gguf class, grid name, with ksigns table)
    "iq2_xxs": ("IQ2_XXS", "iq2xxs_grid", True),
    "iq2_xs": ("IQ2_XS", "iq2xs_grid", True),
    "iq3_xxs": ("IQ3_XXS", "iq3xxs_grid", True),
    "iq1_s": ("IQ1_S", "iq1s_grid", False),
    "iq3_s": ("IQ3_S", "iq3s_grid", False),
    "iq2_s": ("IQ2_S", "iq2s_grid", False),
    "iq1_m": ("IQ1_M", "iq1s_grid", False),
}


def grid_bytes(cls):
    """(n_entries, elems) uint8: the grid values as llama.cpp stores them (int8 for IQ1)."""
    cls.init_grid()
    g = np.asarray(cls.grid, dtype=np.float32).reshape(cls.grid_shape)
    assert np.all(g == np.round(g))
    return g.astype(np.int64).astype(np.int8).view(np.uint8)


def c_array(ctype, name, values, per_line, width):
    lines = [f"FDY_CONSTANT {ctype} {name}[{len(values)}] = {{"]
    for i in range(0, len(values), per_line):
        chunk = ", ".join(f"0x{v:0{width}x}" for v in values[i:i + per_line])
        lines.append(f"    {chunk},")
    lines.append("};")
    return "\n".join(lines)


def tables(fmt):
    clsname, gname, signs = FORMATS[fmt]
    header = f"/* {gname} (llama.cpp name): {{}} entries of {{}} weights, byte j = weight j */"
    cls = getattr(quants, clsname)
    g = grid_bytes(cls)
    elems = g.shape[1]
    header = header.format(g.shape[0], elems)
    if elems == 8:
        vals = [int(v) for v in np.ascontiguousarray(g).view("<u8").reshape(-1)]
        out = [c_array("uint64_t", f"fdy_{fmt}_grid", vals, 4, 16)]
    else:
        vals = [int(v) for v in np.ascontiguousarray(g).view("<u4").reshape(-1)]
        out = [c_array("uint32_t", f"fdy_{fmt}_grid", vals, 8, 8)]
    if signs:
        ks = list(np.frombuffer(quants.IQ2_XXS.ksigns, dtype=np.uint8))
        out.append("/* ksigns_iq2xs: 7 sign bits -> 8 with even parity (bit 7 = parity) */\n"
                   + c_array("uint8_t", f"fdy_{fmt}_ksigns", [int(v) for v in ks], 16, 2))
    return header + "\n" + "\n\n".join(out)


if __name__ == "__main__":
    for fmt in sys.argv[1:] or FORMATS:
        print(tables(fmt))
