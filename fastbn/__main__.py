"""Command line: ``python -m fastbn bench [options]`` runs the built-in
benchmark, ``python -m fastbn info`` prints the build configuration."""
import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m fastbn",
                                     description="fastbn command line tools")
    sub = parser.add_subparsers(dest="command", metavar="{bench,info}")
    sub.required = True
    sub.add_parser("info", help="print backend, version, OpenMP, threads and SIMD paths "
                                "(fastbn.show_config())")
    bench = sub.add_parser("bench", help="time forward-train, backward and inference against "
                                         "the copy bandwidth, PyTorch and the NumPy reference")
    if argv[:1] == ["bench"]:  # the benchmark module (and its imports) only when it runs
        from . import _bench
        bench.description = _bench.__doc__.split("\n\n")[0]
        _bench.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        import fastbn
        fastbn.show_config()
        return 0
    from . import _bench
    return _bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
