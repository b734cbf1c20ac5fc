"""Installs the ``focus_detr`` package and builds its deformable-attention extension.

Builds against the torch already installed (``pip install --no-build-isolation -e .`` or ``python setup.py
build_ext --inplace``), any torch >= 2.1 (running the package needs torch >= 2.5, checked at import: ``focus_detr.MIN_TORCH_VERSION``);
nothing here pins versions. The CPU kernel is always compiled. The CUDA kernel
is compiled when a CUDA toolkit is found; ``FORCE_CUDA=1`` turns a missing toolkit or a failed compile into an error
instead of a CPU-only build, ``NO_CUDA=1`` builds the CPU kernel only. ``TORCH_CUDA_ARCH_LIST`` defaults to the
architectures of the visible GPUs, or to ``8.0;8.6;9.0`` when none is visible.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

PACKAGE_ROOT = os.path.join("projects", "FocusDETR")
CSRC = os.path.join(PACKAGE_ROOT, "focus_detr", "layers", "csrc")


def _log(message):
    print(f"[focus_detr setup] {message}", file=sys.stderr, flush=True)


def _resolve_cuda_home():
    """The toolkit folder. ``nvcc`` on PATH may be a wrapper script that execs the real compiler, in which case
    torch's own guess (the wrapper's parent folder) is wrong: follow the script to the real binary."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):
            match = re.search(rb"exec\s+(\S*nvcc)\b", head)
            if match:
                nvcc = os.path.realpath(match.group(1).decode())
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(nvcc))


def _default_cuda_arch_list():
    """The visible GPUs' architectures (``"9.0"`` on an H100), else the common data-centre and desktop ones."""
    import torch

    if torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in capabilities)
    return "8.0;8.6;9.0"


def _extensions():
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    no_cuda = os.environ.get("NO_CUDA", "0") == "1"
    if force_cuda and no_cuda:
        raise RuntimeError("FORCE_CUDA=1 and NO_CUDA=1 contradict each other: set one of them")
    cuda_home = None if no_cuda else _resolve_cuda_home()
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = _default_cuda_arch_list()
    # Imported after CUDA_HOME is set: torch.utils.cpp_extension reads it at import time.
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    if not sources:
        return []
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    use_cuda = cuda_home is not None and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")) and cuda_sources
    if force_cuda and not use_cuda:
        raise RuntimeError(
            "FORCE_CUDA=1 but no CUDA toolkit (nvcc) or no CUDA sources were found; set CUDA_HOME to the toolkit folder"
        )
    if use_cuda:
        _log(f"building the CUDA kernel with CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        extra_compile_args["nvcc"] = ["-O3", "--use_fast_math", "-DWITH_CUDA"]
        extra_compile_args["cxx"].append("-DWITH_CUDA")
        return [
            CUDAExtension(
                "focus_detr.layers._C",
                sources + cuda_sources,
                extra_compile_args=extra_compile_args,
                extra_link_args=["-fopenmp"],
            )
        ]
    reason = "NO_CUDA=1" if no_cuda else "no CUDA toolkit found"
    _log(f"{reason}: building the CPU kernel only (the CUDA path will be unavailable)")
    return [
        CppExtension(
            "focus_detr.layers._C", sources, extra_compile_args=extra_compile_args, extra_link_args=["-fopenmp"]
        )
    ]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    name="focus_detr",
    version="0.1.0",
    description="Focus-DETR (Less is More: Focus Attention for Efficient DETR) as a Detectron2 project",
    package_dir={"": PACKAGE_ROOT},
    packages=find_packages(PACKAGE_ROOT),
    package_data={"focus_detr": ["layers/csrc/**/*"]},
    python_requires=">=3.10",
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
