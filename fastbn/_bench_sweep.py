"""The size sweep and plot of ``python -m fastbn bench --plot``: GB/s of fastbn,
PyTorch and a copy of the same size against the input size, NCHW and (N, C).

The timing and the ops are fastbn/_bench.py's (as --small's are in _bench_small.py).
"""
import numpy as np

import fastbn

from ._bench import (BYTES_PER_ELEMENT_PASS, COPY_BYTES, fastest, interleaved, make_data,
                     median, numpy_ops, torch_ops)


def sweep_sizes(quick):
    """Input sizes in bytes: 128 KiB to 128 MiB by factors of 2 (8 MiB by 4 with quick)."""
    top, step = (8 * 2**20, 4) if quick else (128 * 2**20, 2)
    sizes, s = [], 128 * 2**10
    while s <= top:
        sizes.append(s)
        s *= step
    return sizes


def sweep_shape(layout, nbytes, itemsize):
    elems = max(nbytes // itemsize, 1)
    if layout == "NCHW":           # (N, 64, 14, 14); N grows
        per = 64 * 14 * 14
        return (max(2, round(elems / per)), 64, 14, 14), 1
    per = 1024                      # (N, 1024); N grows
    return (max(2, round(elems / per)), 1024), 1


def run_sweep(dtype, ops, args, torch, copier, out):
    repeat = max(3, min(args.repeat, 7))
    stat = min if args.stat == "min" else median
    rows = []
    print(f"\nsize sweep for the plot ({args.stat} of {repeat} samples per point; "
          "copy = the faster of "
          f"1 and {copier.threads} threads at the same size)", file=out)
    for layout in ("NCHW", "NC"):
        for nbytes in sweep_sizes(args.quick):
            shape, axis = sweep_shape(layout, nbytes, np.dtype(dtype).itemsize)
            d = make_data(shape, axis, dtype)
            size = d["x"].nbytes
            copy_fns = []
            for threads in sorted({1, copier.threads}):
                src = d["x"].ravel()
                dst = np.ones_like(src)
                copy_fns.append((f"copy{threads}", copier.copier(dst, src, threads)))
            cands = {label: (fn, repeat) for label, fn in copy_fns}
            copy_s = min(stat(v) for v in interleaved(cands, repeat).values())
            fb = numpy_ops(fastbn, d)
            th = torch_ops(torch, d) if torch is not None else None
            for op in ops:
                c = {"fastbn": (fb[op], repeat)}
                if th is not None:
                    c["torch"] = (fastest(th[op])[1], repeat)
                s = interleaved(c, repeat)
                moved = BYTES_PER_ELEMENT_PASS[op] * size
                rows.append(dict(layout=layout, shape=list(shape), op=op, nbytes=size,
                                 fastbn_GBps=moved / stat(s["fastbn"]) / 1e9,
                                 torch_GBps=(moved / stat(s["torch"]) / 1e9
                                             if "torch" in s else None),
                                 copy_GBps=2 * size / copy_s / 1e9))
            print(f"  {layout:<5}{'x'.join(map(str, shape)):>18} {size / 2**20:8.2f} MiB  "
                  + "  ".join(f"{r['op']} {r['fastbn_GBps']:.1f}" for r in rows[-len(ops):])
                  + f"  copy {rows[-1]['copy_GBps']:.1f} GB/s", file=out, flush=True)
            del d, fb, th
    return rows


def save_plot(path, rows, ops, copy_GBps, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layouts = ("NCHW", "NC")
    fig, axes = plt.subplots(len(layouts), len(ops), figsize=(4.2 * len(ops), 3.4 * len(layouts)),
                             squeeze=False, sharey=True)
    for i, layout in enumerate(layouts):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            sel = [r for r in rows if r["layout"] == layout and r["op"] == op]
            mib = [r["nbytes"] / 2**20 for r in sel]
            ax.plot(mib, [r["copy_GBps"] for r in sel], ":", color="grey", label="copy, same size")
            ax.axhline(copy_GBps, ls="--", color="black", lw=0.8,
                       label=f"copy of {COPY_BYTES >> 20} MB: {copy_GBps:.1f} GB/s")
            ax.plot(mib, [r["fastbn_GBps"] for r in sel], "o-", label="fastbn")
            if any(r["torch_GBps"] is not None for r in sel):
                ax.plot(mib, [r["torch_GBps"] for r in sel], "s-", label="PyTorch")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{op}, {'(N, 64, 14, 14)' if layout == 'NCHW' else '(N, 1024)'}",
                         fontsize=9)
            ax.set_xlabel("input size (MiB)")
            if j == 0:
                ax.set_ylabel("GB/s (bytes of the op's bound)")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
