"""Build the optional C kernels; the package works without them (see torchbayesian._native)."""

import logging
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# No -march=native: the kernels use function multiversioning (see gaussian.c), so one build is portable.
_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math", "-std=c99", "-Wno-psabi"]
# Large tensors are split between OpenMP threads. On Linux torch ships GNU OpenMP (libgomp.so.1), and the
# kernels' library, linked against the same soname, shares torch's runtime and thread pool once torch is
# loaded. Elsewhere (or when the compiler lacks OpenMP) the kernels are built single-threaded.
_OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []

_LOG = logging.getLogger("torchbayesian.setup")


class OptionalBuildExt(build_ext):
    """Build the kernels when a C compiler is available, else install the package without them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 (no compiler, missing headers, ...: all optional)
            _LOG.warning("torchbayesian: C kernels not built (%s); the torch implementation will be used.", error)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001
            if not set(_OPENMP) & set(ext.extra_compile_args):
                _LOG.warning("torchbayesian: C kernels not built (%s); the torch implementation will be used.", error)
                return
            _LOG.warning("torchbayesian: C kernels not built with OpenMP (%s); building them single-threaded.", error)
            ext.extra_compile_args = [flag for flag in ext.extra_compile_args if flag not in _OPENMP]
            ext.extra_link_args = [flag for flag in ext.extra_link_args if flag not in _OPENMP]
            self.build_extension(ext)


setup(
    ext_modules=[
        Extension(
            "torchbayesian._native._kernels",
            sources=[
                "torchbayesian/_native/module.c",
                "torchbayesian/_native/gaussian.c",
                "torchbayesian/_native/convolution.c",
            ],
            extra_compile_args=_FLAGS + _OPENMP,
            extra_link_args=_OPENMP,
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
