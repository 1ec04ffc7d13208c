"""fastinr: fused INR decoder kernels.

The csrc/ extension (fastinr._C) is built only when it can be: torch must be importable at build
time (install with --no-build-isolation) and a C++ compiler present; the CUDA sources are added
when nvcc is found, for the archs in TORCH_CUDA_ARCH_LIST (never the local GPU).
FASTINR_SKIP_EXT=1 skips the extension; fastinr then runs on its torch (and triton) backends.
"""
import glob
import os
import sys

from setuptools import find_packages, setup


def extension_build():
    """(ext_modules, cmdclass) for the native extension, or ([], {}) with a message."""
    if os.environ.get("FASTINR_SKIP_EXT", "0") == "1":
        print("fastinr: FASTINR_SKIP_EXT=1, not building the native extension", file=sys.stderr)
        return [], {}
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
    cxx_flags = ["-O3", "-std=c++17", "-march=x86-64-v3" if _is_x86() else "-O3", *openmp]
    define = [("FASTINR_WITH_CUDA", None)] if use_cuda else []
    if use_cuda:
        ext = CUDAExtension("fastinr._C", sources + cuda_sources, define_macros=define,
                            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]},
                            extra_link_args=openmp)
    else:
        ext = CppExtension("fastinr._C", sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=openmp)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def _is_x86():
    import platform
    return platform.machine() in ("x86_64", "AMD64")


ext_modules, cmdclass = extension_build()

setup(
    name="fastinr",
    version="0.1.0",
    description="Fused kernels and drop-in modules for implicit neural representation decoders",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fastinr", "fastinr.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision", "numpy", "pillow", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
