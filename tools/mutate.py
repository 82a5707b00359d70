"""Mutation testing: does the test suite kill realistic one-line bugs?

Each mutant of tools/mutants.py (file, exact old text, new text, description) is
applied alone to a scratch copy of the committed tree (`git archive HEAD`, so the
checkout itself is never touched), the extension is rebuilt when a C or Cython file
changes, and the suite is run; a mutant is killed when the suite fails. Python
mutants run first, on the pristine build; then each C mutant costs one rebuild
(the C files of src_c/ are recompiled in parallel without runtime dispatch and
relinked, with the commands of the first full build). Prints a score table and writes it to --report (Markdown) too.

    python tools/mutate.py                        # every mutant, the full not-slow suite
    python tools/mutate.py -k neumaier -k any_all  # mutants whose name contains these
    python tools/mutate.py --tests tests/test_accuracy.py  # a faster first pass

Refuses to run on a dirty tree (the mutants must match the committed files). The
score to quote is the one with the default, full `-m "not slow"` suite.
"""
import argparse
import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from mutants import MUTANTS  # noqa: E402

PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
# The whole suite, the files that kill most mutants first (-x stops at the first
# failure: a killed mutant costs seconds, not a whole run); then every other file.
FIRST = ["test_large_random.py", "test_tight_accuracy.py", "test_forward_backward.py",
         "test_building_blocks.py", "test_errors.py", "test_running_stats.py", "test_layer.py",
         "test_fold.py", "test_accuracy.py"]


def suite_files(tree):
    names = sorted(f for f in os.listdir(os.path.join(tree, "tests"))
                   if f.startswith("test_") and f.endswith(".py"))
    ordered = [f for f in FIRST if f in names] + [f for f in names if f not in FIRST]
    return [os.path.join("tests", f) for f in ordered]
REBUILT = (".c", ".h", ".pyx", ".pxi")  # .pxi: included by _kernels.pyx


def sh(cmd, cwd, timeout=None, env=None):
    """(exit code, combined output) of cmd; exit code None on a timeout."""
    try:
        p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        return None, out if isinstance(out, str) else out.decode(errors="replace")


def check_clean():
    code, out = sh(["git", "status", "--porcelain", "--untracked-files=no"], ROOT)
    if code != 0 or out.strip():
        sys.exit("tools/mutate.py: the tree has uncommitted changes (or is not a git checkout):\n"
                 f"{out}commit or stash them: mutants are applied to the committed files")


def full_build(scratch):
    """Builds the extension in place; returns the gcc commands that compile the
    C files of src_c/ and link the module (for the C mutants' quick rebuilds)."""
    code, out = sh([sys.executable, "setup.py", "build_ext", "--inplace", "--force"], scratch)
    if code != 0:
        sys.exit(f"tools/mutate.py: the pristine build failed:\n{out[-3000:]}")
    lines = [ln for ln in out.splitlines() if re.match(r"^\S*(gcc|cc|clang)\S* ", ln)]
    compile_c = [ln for ln in lines if re.search(r" -c src_c/\w+\.c ", ln)]
    link = [ln for ln in lines if " -shared " in ln]
    copy = [ln for ln in out.splitlines() if ln.startswith("copying build/")]
    if not compile_c or len(link) != 1 or len(copy) != 1:
        return None  # unknown build output: rebuild with setup.py every time
    src, dst = copy[0][len("copying "):].split(" -> ")
    return compile_c, link[0], src, dst


def rebuild(scratch, quick):
    if quick is None:
        code, out = sh([sys.executable, "setup.py", "build_ext", "--inplace", "--force"], scratch)
        return code == 0, out
    compile_c, link, src, dst = quick
    # every C file (a mutated header reaches several), without target_clones (one
    # instruction set instead of three: every dispatch path rounds identically,
    # -ffp-contract=off), one job per CPU
    cmds = [re.sub(r" -c (src_c/\w+\.c) ", r" -DFBN_NO_DISPATCH -c \1 ", c) for c in compile_c]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda cmd: sh(shlex.split(cmd), scratch), cmds))
    results.append(sh(shlex.split(link), scratch))
    for code, out in results:
        if code != 0:
            return False, out
    shutil.copy(os.path.join(scratch, src), os.path.join(scratch, dst))
    return True, ""


def first_failure(out):
    """The first failed or erroring test named in pytest's output."""
    for ln in out.splitlines():
        m = re.match(r"^(FAILED|ERROR) (\S+)", ln)
        if m:
            return m.group(2)
    m = re.search(r"^(tests/\S+) [.sxX]*F", out, re.M)
    return m.group(1) if m else "(suite exited non-zero: see the log)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[],
                    help="run only mutants whose name contains this (repeatable)")
    ap.add_argument("--tests", nargs="*", default=[],
                    help="test paths for a quick first pass (default: the whole not-slow suite)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per suite run")
    ap.add_argument("--report", default=os.path.join(HERE, "mutation_report.md"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the suite run on the unmutated tree")
    args = ap.parse_args()
    check_clean()
    chosen = [m for m in MUTANTS if not args.k or any(k in m.name for k in args.k)]
    chosen.sort(key=lambda m: m.path.endswith(REBUILT))  # Python mutants on the pristine build
    scratch = tempfile.mkdtemp(prefix="fastbn-mutants-")
    tree = os.path.join(scratch, "tree")
    os.makedirs(tree)
    subprocess.run(f"git -C {shlex.quote(ROOT)} archive HEAD | tar -x -C {shlex.quote(tree)}",
                   shell=True, check=True)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("FASTBN_BACKEND", None)
    rows = []
    tests = args.tests or suite_files(tree)
    try:
        t0 = time.time()
        quick = full_build(tree)
        print(f"pristine build: {time.time() - t0:.0f} s", flush=True)
        if not args.no_baseline:
            t0 = time.time()
            code, out = sh(PYTEST + tests, tree, args.timeout, env)
            if code != 0:
                sys.exit("tools/mutate.py: the suite fails without any mutant:\n" + out[-3000:])
            print(f"baseline suite passes: {time.time() - t0:.0f} s", flush=True)
        dirty_build = False
        for m in chosen:
            path = os.path.join(tree, m.path)
            with open(path) as f:
                original = f.read()
            if original.count(m.old) != 1:
                rows.append((m, "STALE", f"old text found {original.count(m.old)} times", 0.0))
                print(f"{m.name}: STALE (update tools/mutants.py)", flush=True)
                continue
            t0 = time.time()
            try:
                with open(path, "w") as f:
                    f.write(original.replace(m.old, m.new))
                needs_build = m.path.endswith(REBUILT)
                if needs_build or dirty_build:
                    ok, out = rebuild(tree, None if m.path.endswith((".pyx", ".pxi")) else quick)
                    dirty_build = needs_build
                    if not ok:
                        rows.append((m, "BUILD ERROR", out.strip().splitlines()[-1:], 0.0))
                        print(f"{m.name}: build error", flush=True)
                        continue
                code, out = sh(PYTEST + tests, tree, args.timeout, env)
            finally:
                with open(path, "w") as f:  # restore, whatever happened
                    f.write(original)
            seconds = time.time() - t0
            if code == 0:
                status, by = "SURVIVED", "-"
            elif code is None:
                status, by = "KILLED", "(timeout)"
            elif code == 5 or "no tests ran" in out:
                status, by = "SURVIVED", "(no test ran)"
            else:
                status, by = "KILLED", first_failure(out)
            rows.append((m, status, by, seconds))
            print(f"{m.name}: {status} by {by} ({seconds:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"scratch copy kept in {tree}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    killed = sum(r[1] == "KILLED" for r in rows)
    valid = sum(r[1] in ("KILLED", "SURVIVED") for r in rows)
    suite = " ".join(args.tests) or "the whole suite"
    lines = [f"Mutation score: {killed}/{valid} killed ({suite}, -m 'not slow', -x)", "",
             "| mutant | file | status | killed by | s |", "|---|---|---|---|---|"]
    for m, status, by, seconds in rows:
        lines.append(f"| {m.name}: {m.description} | {m.path} | {status} | {by} | {seconds:.0f} |")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    with open(args.report, "w") as f:
        f.write(report)
    return 0 if killed == valid and valid == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
