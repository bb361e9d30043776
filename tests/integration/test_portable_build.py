"""The local engine avoids the CPU-specific paths that crash or do not exist on the user's CPU.

Two things went wrong before (issue 10): llama.cpp built with -march=native repacked the weights into
an AMX buffer on CPUs that have AMX and crashed in the first decode; and a wheel built on one CPU could
use instructions another lacks (SIGILL). `scripts/setup` now builds an x86-64-v3 (AVX2) baseline with no
AVX-512 and no AMX code, and the engine loads models without llama.cpp's extra buffer types. These
tests check both on whatever CPU runs them: they read the installed library's machine code and the
engine's own load log, not the CPU's flags.
"""

from __future__ import annotations

import hashlib
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow

LIB = Path(llama_cpp.__file__).parent / "lib"
#: AVX-512 (a zmm register or a mask register k1-k7) or AMX (a tile instruction)
_WIDE = re.compile(r"%zmm\d|%k[1-7]\b|\btile\w+|\bldtilecfg")


def _libraries() -> list[Path]:
    """The llama.cpp libraries, one per distinct content: a wheel cannot hold symlinks, so each library is
    installed as identical copies (libx.so, libx.so.0, libx.so.0.25.3); disassembling one of them covers all."""
    libs = sorted(p for p in LIB.glob("*.so*") if "ggml" in p.name or "llama" in p.name)
    assert libs, f"no llama.cpp libraries under {LIB}"
    distinct: dict[bytes, Path] = {}
    for lib in libs:
        distinct.setdefault(hashlib.sha256(lib.read_bytes()).digest(), lib)
    return list(distinct.values())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instruction sets")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_the_library_has_no_avx512_or_amx_instructions() -> None:
    """Any AVX2 CPU can run it: no zmm register (AVX-512) or tile instruction (AMX) appears anywhere."""
    for lib in _libraries():
        code = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True
        ).stdout
        assert "ggml-cpu" not in lib.name or re.search(r"\bv\w+\s+.*%ymm", code), f"{lib.name}: no AVX2 code?"
        wide = [code[code.rfind("\n", 0, m.start()) + 1 : code.find("\n", m.end())] for m in _WIDE.finditer(code)]
        assert not wide, f"{lib.name} uses instructions beyond AVX2, e.g. {wide[:3]}"


def test_the_build_reports_no_amx_or_avx512() -> None:
    info = llama_cpp.llama_print_system_info().decode()
    assert "AMX" not in info and "AVX512" not in info, info


def test_the_engine_loads_weights_without_extra_buffer_types(tmp_path: Path) -> None:
    """llama.cpp logs one line per weight buffer; only the plain CPU buffer may appear (no AMX, no repack)."""
    script = (
        "from coldbatch.engines.llamacpp import LlamaCppEngine\n"
        "import asyncio\n"
        "e = LlamaCppEngine(verbose=True, n_ctx=256)\n"
        "asyncio.run(e.aclose())\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    buffers = re.findall(r"(\S+) model buffer size", r.stderr)
    assert buffers and set(buffers) <= {"CPU", "CPU_Mapped"}, buffers
