"""Builds the kvstash package with libkvstash inside it.

`pip install ./client/python` (or `pip wheel ./client/python`) from a checkout
of the repository configures the repository with CMake, builds only the
`kvstash` library target (Release) and puts libkvstash.so into the package
(kvstash/libkvstash.so), so the installed package works outside the repository
without KVSTASH_LIB. The wheel is tagged for this platform (py3-none-<plat>);
libkvstash links the system's nng, zstd and xxhash (Debian: libnng1,
libzstd1, libxxhash0), which the target machine must have.

Environment:
  KVSTASH_SOURCE_DIR  the repository root (default: two levels up from here)
  KVSTASH_CMAKE_ARGS  extra CMake arguments (e.g. "-DKVS_CUDA=ON" for device
                      put/get of CUDA tensors; default -DKVS_CUDA=AUTO)
  KVSTASH_NO_BUILD=1  a package without the library (it then loads the one
                      that `cmake --install` put on the system, or KVSTASH_LIB)

Offline builds work with Debian's python3-setuptools and python3-wheel:
  pip wheel --no-build-isolation --no-index --no-deps ./client/python
"""
import os
import re
import shlex
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))


def _source_dir():
    src = os.environ.get("KVSTASH_SOURCE_DIR") or os.path.join(HERE, "..", "..")
    src = os.path.abspath(src)
    return src if os.path.isfile(os.path.join(src, "client", "kvstash.h")) else None


def _version():
    """The CMake project version (the one place it is written)."""
    src = _source_dir()
    if src:
        with open(os.path.join(src, "CMakeLists.txt")) as f:
            m = re.search(r"project\(kvstash\s+VERSION\s+([0-9.]+)", f.read())
        if m:
            return m.group(1)
    # a copy without the repository: the version written by an earlier build
    vf = os.path.join(HERE, "kvstash", "_version.py")
    if not os.path.isfile(vf):
        raise SystemExit("kvstash: neither the repository (KVSTASH_SOURCE_DIR) nor "
                         "kvstash/_version.py says which version this is")
    with open(vf) as f:
        return re.search(r'"([^"]+)"', f.read()).group(1)


def _no_build():
    return os.environ.get("KVSTASH_NO_BUILD", "") not in ("", "0")


class BuildWithLib(build_py):
    """build_py, plus libkvstash.so built by CMake and _version.py."""

    def run(self):
        super().run()
        pkg = os.path.join(self.build_lib, "kvstash")
        os.makedirs(pkg, exist_ok=True)
        with open(os.path.join(pkg, "_version.py"), "w") as f:
            f.write(f'version = "{_version()}"  # written by setup.py from the CMake project version\n')
        if _no_build():
            return
        src = _source_dir()
        if not src:
            raise SystemExit("kvstash: the repository (CMakeLists.txt, client/) is not at "
                             f"{os.path.join(HERE, '..', '..')}: set KVSTASH_SOURCE_DIR, or "
                             "KVSTASH_NO_BUILD=1 for a package that loads an installed libkvstash")
        bdir = os.path.abspath(os.path.join(self.build_lib, "..", "kvstash-cmake"))
        args = ["-DCMAKE_BUILD_TYPE=Release", "-DKVS_CUDA=AUTO", "-DKVS_SANITIZE=OFF",
                "-DKVS_WERROR=OFF"] + shlex.split(os.environ.get("KVSTASH_CMAKE_ARGS", ""))
        self.announce(f"kvstash: cmake {src} -> {bdir} {' '.join(args)}", level=2)
        subprocess.run(["cmake", "-S", src, "-B", bdir] + args, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", bdir, "-j", jobs, "--target", "kvstash"], check=True)
        lib = os.path.realpath(os.path.join(bdir, "client", "libkvstash.so"))
        shutil.copyfile(lib, os.path.join(pkg, "libkvstash.so"))


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # a platform wheel: it carries a shared library
        return not _no_build()


cmdclass = {"build_py": BuildWithLib}
try:
    from wheel.bdist_wheel import bdist_wheel

    class Bdist(bdist_wheel):
        def get_tag(self):  # ctypes, no extension module: any Python 3, this platform
            _, _, plat = super().get_tag()
            return ("py3", "none", plat) if not _no_build() else ("py3", "none", "any")

    cmdclass["bdist_wheel"] = Bdist
except ImportError:
    pass

setup(version=_version(), cmdclass=cmdclass, distclass=BinaryDistribution,
      package_data={"kvstash": ["libkvstash.so", "_version.py"]})
