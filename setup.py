"""fastinr: fused INR decoder kernels.

The csrc/ extension (fastinr._C) is built only when it can be: torch must be importable at build
time (install with --no-build-isolation) and a C++ compiler present; the CUDA sources are added
when nvcc is found, for the archs in TORCH_CUDA_ARCH_LIST (never the local GPU).
FASTINR_SKIP_EXT=1 skips the extension; fastinr then runs on its torch (and triton) backends.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup


def extension_build():
    """(ext_modules, cmdclass) for the native extension, or ([], {}) with a message."""
    if os.environ.get("FASTINR_SKIP_EXT", "0") == "1":
        print("fastinr: FASTINR_SKIP_EXT=1, not building the native extension", file=sys.stderr)
        return [], {}
    _locate_cuda_home()
    try:
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as err:
        print(f"fastinr: torch not importable at build time ({err}); not building the native "
              "extension (install torch first and use pip install --no-build-isolation)",
              file=sys.stderr)
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        return [], {}
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    use_cuda = bool(cuda_sources) and CUDA_HOME is not None and os.environ.get("FASTINR_SKIP_CUDA", "0") != "1"
    if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # Never read the local GPU: pick a fixed, portable set of targets.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    openmp = ["-fopenmp"]
    # Generic code for the build's baseline ISA; csrc/elementwise_avx2.cpp and _avx512.cpp carry their target
    # pragma and is only called after a run-time CPU check, so the wheel runs on any x86-64 CPU.
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", *openmp]
    define = [("FASTINR_WITH_CUDA", None)] if use_cuda else []
    if use_cuda:
        ext = CUDAExtension("fastinr._C", sources + cuda_sources, define_macros=define,
                            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
                            extra_link_args=openmp)
    else:
        ext = CppExtension("fastinr._C", sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=openmp)
    return [ext], {"build_ext": _optional(BuildExtension).with_options(use_ninja=True)}


def _locate_cuda_home():
    """torch takes CUDA_HOME from the environment, else two levels above the nvcc on PATH. When that
    nvcc is a wrapper script outside the toolkit, point CUDA_HOME at torch's default location
    instead, provided it holds a toolkit (nvcc and the runtime headers)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    guessed = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for home in (guessed, "/usr/local/cuda"):
        if (os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h"))
                and os.path.isfile(os.path.join(home, "bin", "nvcc"))):
            if home != guessed:
                os.environ["CUDA_HOME"] = home
            return


def _optional(build_ext):
    """build_ext that reports a failed compile instead of failing the install: fastinr still imports
    and runs on its other backends (tests/test_native.py fails loudly when the extension is missing)."""
    class OptionalBuildExtension(build_ext):
        failed = set()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as err:  # compiler or toolchain problem
                print(f"fastinr: WARNING: building {ext.name} failed ({type(err).__name__}: {err}); "
                      "installing without the native backend", file=sys.stderr)
                self.failed.add(ext.name)
                # never leave an older build of the extension next to the new sources
                for path in (self.get_ext_fullpath(ext.name), self.get_ext_filename(ext.name)):
                    if os.path.exists(path):
                        os.remove(path)

        def copy_extensions_to_source(self):
            self.extensions = [ext for ext in self.extensions if ext.name not in self.failed]
            super().copy_extensions_to_source()
    return OptionalBuildExtension


ext_modules, cmdclass = extension_build()

setup(
    name="fastinr",
    version="0.1.0",
    description="Fused kernels and drop-in modules for implicit neural representation decoders",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fastinr", "fastinr.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision", "numpy", "pillow", "tqdm", "matplotlib",
                      "tensorboard"],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
