"""The CUDA emulator's own tests (tests/cuemu/selftest.cu), one pytest case per selftest case.

The selftest is CUDA source: it is rewritten by tests/cuemu/rewrite_launches.py and compiled as
C++ against tests/cuemu, exactly as the CUDA back end is in the emulation build. It checks warp
shuffles and votes, divergent warps, barriers, the deadlock and divergence reports, the launch
limits (through the project's PCMEKIT_CUDA_LAUNCH_CHECK), shared memory, atomics, the 16-bit
conversions and streams/events. With PCMEKIT_CUEMU_SANITIZE=1 it is built with ASan+UBSan.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUEMU = ROOT / "tests" / "cuemu"


def _compiler() -> list[str]:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        pytest.skip("no C++ compiler to build the emulator's selftest")
    return shlex.split(cxx)


@pytest.fixture(scope="module")
def selftest(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuemu")
    source = out / "selftest.cpp"
    subprocess.run(
        [sys.executable, str(CUEMU / "rewrite_launches.py"), str(CUEMU / "selftest.cu"), str(source)], check=True
    )
    flags = ["-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas"]
    if os.environ.get("PCMEKIT_CUEMU_SANITIZE") == "1":
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    binary = out / "selftest"
    build = subprocess.run(
        [*_compiler(), *flags, f"-I{CUEMU}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}",
         str(source), "-o", str(binary)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    return binary


def _cases() -> list[str]:
    # The case list is in the source; read it without compiling (collection must be cheap).
    text = (CUEMU / "selftest.cu").read_text()
    start = text.index("const std::map<std::string, std::function<void()>> cases = {")
    block = text[start : text.index("};", start)]
    return [line.split('"')[1] for line in block.splitlines() if line.strip().startswith('{"')]


@pytest.mark.parametrize("case", _cases())
def test_selftest_case(selftest: Path, case: str) -> None:
    env = {**os.environ, "CUEMU_QUIET": "1"}
    env.pop("LD_PRELOAD", None)  # an ASan selftest links its own runtime
    run = subprocess.run([str(selftest), case], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_every_case_is_collected(selftest: Path) -> None:
    listed = subprocess.run([str(selftest), "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listed) == sorted(_cases())


def test_rewrite_refuses_a_launch_it_cannot_parse(tmp_path: Path) -> None:
    src = tmp_path / "bad.cu"
    src.write_text("void f() { k<<<1, 2 >> 1>>>(); x <<< 3; }\n")
    run = subprocess.run(
        [sys.executable, str(CUEMU / "rewrite_launches.py"), str(src), str(tmp_path / "bad.cpp")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "left after rewriting" in run.stderr + run.stdout
