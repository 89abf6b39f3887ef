"""Build of dwconv's C++ extension `dwconv._C`.

CPU kernels are always built (g++, OpenMP). CUDA kernels are built whenever a CUDA build of torch and a CUDA
toolkit (nvcc) are present, GPU or not. Environment:
  DWCONV_BUILD_CUDA=0|1     skip / require the CUDA part (default: build it when possible)
  DWCONV_CUDA_ARCHS="80;90" SM architectures for the CUDA kernels (default 80;90)
  CUDA_HOME                 the toolkit root (default: found from nvcc on the PATH or /usr/local/cuda*)
  MAX_JOBS                  parallel compile jobs
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The real toolkit root: nvcc on the PATH may be a wrapper script that execs the real one."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            with open(nvcc, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):
                candidates += [os.path.dirname(os.path.dirname(p.decode()))
                               for p in re.findall(rb"(/[^\s\"']+/bin/nvcc)", head)]
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


def _write_build_info(cuda_archs):
    """dwconv/_build_info.py: what the extension was built for (read at run time to refuse older GPUs)."""
    with open(os.path.join(ROOT, "dwconv", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py at build time."""\n')
        f.write(f"CUDA_ARCHS = {tuple(cuda_archs)!r}\n")


def _extensions():
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("dwconv builds its C++ extension against the torch you run with. Install torch first, then "
                 "`pip install -e .` (its build backend, build_backend/, finds that torch).")
    import torch
    want_cuda = os.environ.get("DWCONV_BUILD_CUDA", "auto").lower()
    cuda_home = _find_cuda_home() if want_cuda not in ("0", "false", "no") else None
    with_cuda = bool(cuda_home) and torch.version.cuda is not None
    if want_cuda in ("1", "true", "yes") and not with_cuda:
        sys.exit(f"DWCONV_BUILD_CUDA=1 but cannot build CUDA kernels: torch.version.cuda={torch.version.cuda}, "
                 f"CUDA toolkit={cuda_home}")
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not with_cuda:
        _write_build_info(())
        return [CppExtension("dwconv._C", sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])]

    archs = [a.strip() for a in os.environ.get("DWCONV_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
    gencode = []
    for arch in archs:
        num = arch.replace(".", "").replace("sm_", "")
        gencode += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    newest = archs[-1].replace(".", "").replace("sm_", "").rstrip("a")
    gencode += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]  # PTX for newer cards
    _write_build_info(tuple(int(a.replace(".", "").replace("sm_", "").rstrip("a")) for a in archs))
    # c10/cuda headers need only the toolkit; the pip nvidia packages carry the rest if anything asks.
    nvidia_inc = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include"))
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    return [CUDAExtension(
        "dwconv._C", sources, include_dirs=include_dirs + [os.path.abspath(p) for p in nvidia_inc],
        define_macros=[("DWCONV_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags,
                            "nvcc": ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo",
                                     "--expt-relaxed-constexpr"] + gencode},
        extra_link_args=["-fopenmp"])]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="dwconv",
    version="0.1.0",
    description="Fast large-kernel depthwise convolutions for PyTorch (CUDA, Triton and CPU backends)",
    packages=find_packages(include=["dwconv", "dwconv.*", "robust_models", "robust_models.*"]),
    package_data={"dwconv": ["dispatch_table.json"]},  # "auto"'s measurements, read at run time
    python_requires=">=3.9",
    install_requires=["torch>=2.11"],  # the oldest torch seen running dwconv (the lent H200 machine's, 2026-12-04)
    extras_require={
        "flops": ["fvcore"],
        "triton": ["triton"],
        "train": ["timm", "torchvision", "tqdm"],
        "bench": ["fvcore", "tqdm", "matplotlib"],
        "peers": ["onnx", "onnxruntime", "openvino"],
        "test": ["pytest", "fvcore", "timm", "torchvision", "tqdm", "onnx", "onnxruntime", "onnxscript"],
    },
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
