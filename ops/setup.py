"""Build the ``MultiScaleDeformableAttention`` CUDA extension (top-level module of that name).

Install into the current environment (the build needs the installed torch, hence no build isolation)::

    pip install --no-build-isolation ./ops                 # on a machine with a GPU
    TORCH_CUDA_ARCH_LIST="8.0;9.0" FORCE_CUDA=1 pip install --no-build-isolation ./ops   # without a GPU

Environment variables:
    FORCE_CUDA=1             build even when no GPU is visible (CI, login nodes).
    TORCH_CUDA_ARCH_LIST     target architectures, e.g. "8.0;9.0" (A100, H100). Defaults to "8.0;9.0" when
                             FORCE_CUDA=1 and no GPU is visible (torch cannot guess them then).
    CUDA_HOME                CUDA toolkit root holding bin/nvcc (default: found by torch, e.g. /usr/local/cuda).
    MAX_JOBS                 parallel compile jobs (ninja).

The CUDA headers of the pip ``nvidia`` wheels (``site-packages/nvidia/cu13/include``, needed for ``cusparse.h``
when the toolkit lacks it) are appended to ``CPATH`` automatically.
"""

import glob
import os
import site
import sys

from setuptools import setup

DEFAULT_ARCH_LIST = "8.0;9.0"
HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_HELP = (
    'Build with: TORCH_CUDA_ARCH_LIST="8.0;9.0" FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda '
    "pip install --no-build-isolation ./ops"
)


def _fail(message: str) -> None:
    sys.stderr.write(f"\nMultiScaleDeformableAttention build error: {message}\n{BUILD_HELP}\n\n")
    raise SystemExit(1)


try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
except ImportError as exc:
    _fail(
        f"cannot import torch in the build environment ({exc}). The op is built against the installed torch: "
        "use `pip install --no-build-isolation ./ops` inside the environment that has torch."
    )


def _append_env_path(name: str, path: str) -> None:
    current = [p for p in os.environ.get(name, "").split(os.pathsep) if p]
    if path not in current:
        os.environ[name] = os.pathsep.join(current + [path])


def _nvidia_wheel_include_dirs() -> list:
    """Include folders of the pip CUDA wheels (nvidia/cu*/include), newest CUDA first."""
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    found = []
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "include")), reverse=True):
            if os.path.isdir(path) and path not in found:
                found.append(path)
    return found


def _check_toolchain() -> None:
    if torch.version.cuda is None:
        _fail(
            f"the installed torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); "
            "install a CUDA build of torch (e.g. the cu130 wheel) to compile the op."
        )
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc is None or not os.path.exists(nvcc):
        _fail(
            f"no CUDA toolkit found (CUDA_HOME={CUDA_HOME!r}, expected bin/nvcc under it). Install the CUDA "
            f"toolkit matching torch's CUDA {torch.version.cuda} (or the pip wheels nvidia-cuda-nvcc, nvidia-nvvm, "
            "nvidia-cuda-crt, nvidia-cuda-cccl) and set CUDA_HOME."
        )
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    if not torch.cuda.is_available():
        if not force_cuda:
            _fail("no CUDA device is visible; set FORCE_CUDA=1 (and TORCH_CUDA_ARCH_LIST) to build without one.")
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
            sys.stderr.write(
                f"MultiScaleDeformableAttention: no GPU visible and TORCH_CUDA_ARCH_LIST unset; "
                f"building for {DEFAULT_ARCH_LIST}\n"
            )
    for include_dir in _nvidia_wheel_include_dirs():
        _append_env_path("CPATH", include_dir)


def _extension():
    sources = sorted(glob.glob(os.path.join("src", "*.cpp"))) + sorted(glob.glob(os.path.join("src", "cuda", "*.cu")))
    return CUDAExtension(
        name="MultiScaleDeformableAttention",
        sources=sources,
        include_dirs=[os.path.join(HERE, "src")],
        extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3"]},
    )


os.chdir(HERE)
_check_toolchain()
setup(
    name="MultiScaleDeformableAttention",
    version="1.0.0",
    description="Multi-scale deformable attention CUDA op (forward/backward, float32/float64) for mask2former_sim",
    python_requires=">=3.9",
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
