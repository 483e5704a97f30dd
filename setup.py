"""Build script of hypkern: the pure-Python package plus two optional native extensions.

* ``hypkern._C``       C++ CPU kernels and the op registry (csrc/registry.cpp, csrc/cpu/*.cpp)
* ``hypkern._C_cuda``  CUDA kernels (csrc/cuda/*), needs ``hypkern._C`` (it holds the schemas)

Recommended: ``pip install --no-build-isolation .`` (compiles against the installed torch);
for development ``python setup.py build_ext --inplace``. ``MAX_JOBS=2`` limits parallel
compile jobs (ninja is used when installed).

Environment switches (``auto``: build if possible, otherwise warn and go on without it;
``1``: fail the build if it cannot be built; ``0``: skip):

* ``HYPKERN_BUILD_CPU=auto|0|1``   (default ``auto``)
* ``HYPKERN_BUILD_CUDA=auto|0|1``  (default ``auto``: when torch is a CUDA build and nvcc exists)
* ``TORCH_CUDA_ARCH_LIST``         (default ``8.0;9.0``, i.e. sm_80 and sm_90)
* ``CUDA_HOME``                    (default ``/usr/local/cuda`` when unset and present)

Without a C++ compiler (or without torch at build time) the package installs as pure Python
and falls back to the Triton/reference backends with a one-line warning at first use.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _switch(name: str) -> str:
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise SystemExit(f"{name} must be auto, 0 or 1, got {value!r}")
    return value


def _say(msg: str) -> None:
    print(f"hypkern setup: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    warnings.warn(f"hypkern setup: {msg}", stacklevel=2)
    _say("WARNING: " + msg)


def _nvidia_include_dirs() -> list[str]:
    """include/ of the pip-installed NVIDIA wheels next to torch (cuBLAS etc. headers of the CUDA
    torch build live there when the system toolkit lacks them; harmless elsewhere)."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    seen, out = set(), []
    for d in dirs:
        d = os.path.realpath(d)
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _extensions():
    """The extension modules to build and the build_ext command class (or none)."""
    want_cpu, want_cuda = _switch("HYPKERN_BUILD_CPU"), _switch("HYPKERN_BUILD_CUDA")
    if want_cpu == "0" and want_cuda == "0":
        _say("HYPKERN_BUILD_CPU=0 and HYPKERN_BUILD_CUDA=0: pure-Python install")
        return [], {}

    # CUDA_HOME must be set before torch.utils.cpp_extension is imported (it reads it then).
    if not os.environ.get("CUDA_HOME") and os.path.isfile("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    if want_cuda != "0" and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"

    try:
        import torch
        from torch.utils import cpp_extension as ce
    except Exception as exc:  # no torch at build time
        if "1" in (want_cpu, want_cuda):
            raise SystemExit(f"hypkern setup: the native extensions need torch at build time: {exc}")
        _warn(f"torch is not importable ({exc}); installing the pure-Python package only")
        return [], {}

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0]) is None:
        if "1" in (want_cpu, want_cuda):
            raise SystemExit(f"hypkern setup: no C++ compiler ({cxx!r}) found")
        _warn(f"no C++ compiler ({cxx!r}) found; installing the pure-Python package only")
        return [], {}

    if want_cpu == "0":
        if want_cuda == "1":
            raise SystemExit("hypkern setup: HYPKERN_BUILD_CUDA=1 needs the CPU extension "
                             "(it holds the op registry); do not set HYPKERN_BUILD_CPU=0")
        _say("HYPKERN_BUILD_CPU=0: no native extensions (the CUDA one needs the CPU one)")
        return [], {}

    include = [os.path.join(ROOT, "csrc")]
    # -fno-math-errno: sqrt inlines (and vectorises) instead of calling libm for errno.
    cxx_flags = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-Wno-unknown-pragmas"]
    exts = [ce.CppExtension(
        "hypkern._C",
        sources=["csrc/registry.cpp", "csrc/cpu/pairwise.cpp", "csrc/cpu/rowwise.cpp"],
        include_dirs=include,
        extra_compile_args={"cxx": cxx_flags},
    )]

    if want_cuda != "0":
        reasons = []
        if not torch.version.cuda:
            reasons.append("torch is not a CUDA build")
        nvcc = os.path.join(ce.CUDA_HOME, "bin", "nvcc") if ce.CUDA_HOME else None
        if not nvcc or not os.path.isfile(nvcc):
            reasons.append(f"nvcc not found (CUDA_HOME={ce.CUDA_HOME!r})")
        if reasons:
            if want_cuda == "1":
                raise SystemExit("hypkern setup: HYPKERN_BUILD_CUDA=1 but " + "; ".join(reasons))
            _say("skipping the CUDA extension: " + "; ".join(reasons))
        else:
            _say(f"building the CUDA extension with {nvcc} for TORCH_CUDA_ARCH_LIST="
                 f"{os.environ['TORCH_CUDA_ARCH_LIST']}")
            exts.append(ce.CUDAExtension(
                "hypkern._C_cuda",
                sources=["csrc/cuda/module.cpp", "csrc/cuda/rowwise.cu", "csrc/cuda/pairwise.cu"],
                include_dirs=include + _nvidia_include_dirs(),
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            ))

    optional = {"hypkern._C": want_cpu == "auto", "hypkern._C_cuda": want_cuda == "auto"}

    class BuildExt(ce.BuildExtension):
        """BuildExtension that, for switches left at auto, warns and goes on when one
        extension fails to compile (the package still works without it)."""

        failed: set = set()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                if not optional.get(ext.name, False):
                    raise
                self.failed.add(ext.name)
                _warn(f"could not build {ext.name} ({type(exc).__name__}: {exc}); "
                      "continuing without it")

        def copy_extensions_to_source(self):  # --inplace: copy only what was built
            kept = self.extensions
            self.extensions = [e for e in kept if e.name not in self.failed]
            try:
                super().copy_extensions_to_source()
            finally:
                self.extensions = kept

    return exts, {"build_ext": BuildExt.with_options(use_ninja=shutil.which("ninja") is not None)}


def _drop_stale(built: set[str]) -> None:
    """Remove extension binaries of an earlier build from build/lib* that this build does not
    make (e.g. _C_cuda after HYPKERN_BUILD_CUDA=0), so they are not installed with the package."""
    for name in ("_C", "_C_cuda"):
        if f"hypkern.{name}" in built:
            continue
        for path in glob.glob(os.path.join(ROOT, "build", "lib*", "hypkern", f"{name}.*")):
            _say(f"removing stale {os.path.relpath(path, ROOT)}")
            os.remove(path)


ext_modules, cmdclass = _extensions()
_drop_stale({e.name for e in ext_modules})
setup(ext_modules=ext_modules, cmdclass=cmdclass)
