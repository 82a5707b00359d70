"""Build of the fastbn extension: C99 kernels (src_c/) behind a Cython module.

Threads come from fastbn's own pool (src_c/parallel.c): POSIX threads where the
compiler has them (fork-safe, and not stalled by a late worker on a busy machine),
else OpenMP (MSVC), else one thread, with a message. FASTBN_THREADS=pthreads,
openmp or none forces a choice (FASTBN_NO_OPENMP=1, the old switch, means none).
FASTBN_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer for
the CI's memory-safety run, at -O1 and with the kernels compiled once, for the
baseline (FBN_ONE_CLONE, src_c/compiler.h).

The C files compile in parallel, one job per CPU (NPY_NUM_BUILD_JOBS=N sets N): the
kernel templates are instantiated in one translation unit per dtype
(src_c/kernels_*.c), each compiled for three instruction sets, minutes each.
"""
import concurrent.futures
import glob
import os
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BASE_FLAGS = ["-std=c99", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
# -ffp-contract=off: no silent FMA, so every dispatch path and thread count
# rounds identically (and TwoSum stays exact). -fno-trapping-math lets loops
# with a ReLU select vectorise; it changes no result, only FP-exception flags.
# No -march: wheels must run on any CPU of their platform; kernels.c dispatches
# at run time (GCC on x86-64) to AVX2/AVX-512 clones.
MSVC_FLAGS = ["/std:c11", "/O2", "/fp:precise"]
# MSVC: C99's `restrict` needs /std:c11 (Visual Studio 2019 16.8 or later);
# /fp:precise (the default, said explicitly) contracts nothing into FMA.


def compiler_accepts(compiler, flags, code="int main(void) { return 0; }\n", link_flags=()):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=list(flags))
            compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                     extra_postargs=list(link_flags))
        except Exception:
            return False
    return True


OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
PTHREADS_PROBE = ("#include <pthread.h>\nstatic void *f(void *a) { return a; }\n"
                  "int main(void) { pthread_t t; if (pthread_create(&t, 0, f, 0)) return 1;\n"
                  "  pthread_atfork(0, 0, 0); return pthread_join(t, 0); }\n")


def thread_pool_choice():
    choice = os.environ.get("FASTBN_THREADS", "").lower()
    if not choice and os.environ.get("FASTBN_NO_OPENMP") == "1":
        choice = "none"
    if choice not in ("", "pthreads", "openmp", "none"):
        raise SystemExit(f"FASTBN_THREADS must be pthreads, openmp or none, got {choice!r}")
    return choice


def build_jobs():
    jobs = os.environ.get("NPY_NUM_BUILD_JOBS", "")
    if jobs and not jobs.isdigit():
        raise SystemExit(f"NPY_NUM_BUILD_JOBS must be a number of jobs, got {jobs!r}")
    return int(jobs) if jobs else (os.cpu_count() or 1)


def parallel_compile(compile_one, jobs):
    """compile_one (a CCompiler's compile method), one source per call, in a pool of
    threads (the compilers are processes; setuptools builds one file at a time)."""
    def compile_all(sources, *args, **kwargs):
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            done = pool.map(lambda src: compile_one([src], *args, **kwargs), sources)
            return [obj for objs in done for obj in objs]
    return compile_all


class BuildExt(build_ext):
    def build_extensions(self):
        cc = self.compiler
        msvc = cc.compiler_type == "msvc"
        compile_flags = list(MSVC_FLAGS if msvc else BASE_FLAGS)
        link_flags = []
        macros = []
        choice = thread_pool_choice()
        pthread = ["-pthread"]
        omp = ["/openmp"] if msvc else ["-fopenmp"]
        if choice == "none":
            print("fastbn: threads disabled (FASTBN_THREADS=none); kernels run on one thread")
        elif choice in ("", "pthreads") and not msvc and compiler_accepts(
                cc, pthread, PTHREADS_PROBE, pthread):
            compile_flags += pthread
            link_flags += pthread
            macros.append(("FBN_POOL_PTHREADS", "1"))
            print("fastbn: building with its POSIX-threads pool")
        elif choice in ("", "openmp") and compiler_accepts(cc, omp, OPENMP_PROBE,
                                                          [] if msvc else omp):
            compile_flags += omp
            link_flags += [] if msvc else omp
            print("fastbn: building with an OpenMP pool (not fork-safe)")
        else:
            print(f"fastbn: the compiler has no {choice or 'POSIX threads or OpenMP'}; "
                  "building without threads (kernels run on one thread)")
        if os.environ.get("FASTBN_SANITIZE") == "1":
            san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-fno-omit-frame-pointer", "-O1", "-g"]
            compile_flags += san
            link_flags += san
            macros.append(("FBN_ONE_CLONE", "1"))  # see src_c/compiler.h
            print("fastbn: building with AddressSanitizer and UndefinedBehaviorSanitizer")
        for ext in self.extensions:
            ext.define_macros = list(ext.define_macros) + macros
            ext.extra_compile_args = compile_flags
            ext.extra_link_args = link_flags
        jobs = build_jobs()
        if jobs > 1:
            self.compiler.compile = parallel_compile(self.compiler.compile, jobs)
        super().build_extensions()


# The longest compiles first, so that the parallel jobs end together.
KERNEL_UNITS = ["src_c/kernels_f16.c", "src_c/kernels_bf16.c", "src_c/kernels_f32.c",
                "src_c/kernels_f64.c"]
extension = Extension(
    "fastbn._kernels",
    sources=[*KERNEL_UNITS, "fastbn/_kernels.pyx", "src_c/kernels.c", "src_c/plan.c",
             "src_c/stream.c", "src_c/work.c", "src_c/parallel.c", "src_c/outmem.c"],
    include_dirs=["src_c", np.get_include()],
    depends=[*glob.glob("fastbn/*.pxi"), "fastbn/_kernels.pxd", *glob.glob("src_c/*.h")],
    # NumPy 1.22's API at least: the outputs' allocator (PyDataMem_SetHandler, _front.pxi)
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                   ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")],
)

setup(
    ext_modules=cythonize([extension], compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
