"""Build the optional C kernels; the package works without them (see torchbayesian._native)."""

import logging

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# No -march=native: the kernels use function multiversioning (see gaussian.c), so one build is portable.
_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math", "-std=c99", "-Wno-psabi"]

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
            _LOG.warning("torchbayesian: C kernels not built (%s); the torch implementation will be used.", error)


setup(
    ext_modules=[
        Extension(
            "torchbayesian._native._kernels",
            sources=[
                "torchbayesian/_native/module.c",
                "torchbayesian/_native/gaussian.c",
                "torchbayesian/_native/convolution.c",
            ],
            extra_compile_args=_FLAGS,
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
