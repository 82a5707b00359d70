"""Build of the fastbn extension: C99 kernels (src_c/) behind a Cython module.

OpenMP is used when the compiler supports it and left out, with a message,
when it does not (or when FASTBN_NO_OPENMP=1). FASTBN_SANITIZE=1 builds with
AddressSanitizer and UndefinedBehaviorSanitizer for the CI's memory-safety run.
"""
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


class BuildExt(build_ext):
    def build_extensions(self):
        cc = self.compiler
        msvc = cc.compiler_type == "msvc"
        compile_flags = [] if msvc else list(BASE_FLAGS)
        link_flags = []
        serial = [] if msvc else ["-Wno-unknown-pragmas"]  # the omp pragmas, unused
        if os.environ.get("FASTBN_NO_OPENMP") == "1":
            print("fastbn: OpenMP disabled by FASTBN_NO_OPENMP=1; kernels run on one thread")
            compile_flags += serial
        else:
            omp = ["/openmp"] if msvc else ["-fopenmp"]
            if compiler_accepts(cc, omp, OPENMP_PROBE, [] if msvc else omp):
                compile_flags += omp
                link_flags += [] if msvc else omp
                print("fastbn: building with OpenMP")
            else:
                print("fastbn: the compiler does not support OpenMP; building without it "
                      "(kernels run on one thread)")
                compile_flags += serial
        if os.environ.get("FASTBN_SANITIZE") == "1":
            san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-fno-omit-frame-pointer", "-O1", "-g"]
            compile_flags += san
            link_flags += san
            print("fastbn: building with AddressSanitizer and UndefinedBehaviorSanitizer")
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags
            ext.extra_link_args = link_flags
        super().build_extensions()


extension = Extension(
    "fastbn._kernels",
    sources=["fastbn/_kernels.pyx", "src_c/kernels.c"],
    include_dirs=["src_c", np.get_include()],
    depends=["fastbn/_front.pxi", "src_c/fastbn.h", "src_c/plan.h", "src_c/kernels_impl.h"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize([extension], compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
