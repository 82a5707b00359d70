"""Command line: ``python -m fastbn bench [options]`` runs the built-in
benchmark, ``python -m fastbn info`` prints the build configuration."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbn",
                                     description="fastbn command line tools")
    sub = parser.add_subparsers(dest="command", metavar="{bench,info}")
    sub.required = True
    sub.add_parser("info", help="print backend, version, OpenMP, threads and SIMD paths "
                                "(fastbn.show_config())")
    from . import _bench
    bench = sub.add_parser("bench", help="time forward-train, backward and inference against "
                                         "the copy bandwidth, PyTorch and the NumPy reference",
                           description=_bench.__doc__.split("\n\n")[0])
    _bench.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        import fastbn
        fastbn.show_config()
        return 0
    return _bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
