"""Find and open llama.cpp's shared library, as shipped prebuilt in the `llama-cpp-py-sync` wheel.

The export is checked, quantized and LoRA-checked by llama.cpp itself, through the C API that
the wheel's cffi declarations describe (`llama_cpp_py_sync._cffi_bindings.ffi`). Only the
declarations and the library files are used; the wheel's Python wrapper is not.

The wheel's libraries are built against glibc 2.38 although tagged manylinux2014. On an older
glibc (Debian 12: 2.36, Ubuntu 22.04: 2.35) they fail to open only because the C23 variants of
strtol/strtoul/strtoull/sscanf (`__isoc23_*`, glibc 2.38) are referenced; these differ from the
classic functions only for "0b" binary literals, which llama.cpp does not parse. So on such a
system a copy of the libraries is made in the user's cache, with those references pointed at the
classic functions (an ELF edit of the symbol names and version indices, no compiler needed).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import struct
from pathlib import Path
from typing import Any, Optional

from backend.core.errors import UserError
from backend.core.locks import file_lock

INSTALL_HINT = "pip install llama-cpp-py-sync"
_C23 = b"__isoc23_"
_CLASSIC_VERSION = b"GLIBC_2.2.5"  # x86_64's first glibc version: strtol & co. exist under it
_VER_FLG_WEAK = 0x2
_loaded: dict[str, Any] = {}


class LlamaCppMissing(UserError):
    """llama.cpp cannot be loaded on this machine; the sentence says why and what to install."""


def _package_dir() -> Path:
    try:
        import llama_cpp_py_sync._cffi_bindings as bindings
    except ImportError as e:
        raise LlamaCppMissing("llama.cpp's Python package is not installed, so the GGUF cannot be checked by "
                              f"llama.cpp itself. Install it with `{INSTALL_HINT}` and export again.") from e
    return Path(bindings.__file__).parent


def ffi() -> Any:
    import llama_cpp_py_sync._cffi_bindings as bindings

    return bindings.ffi


def _glibc_older_than(major: int, minor: int) -> bool:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return False
    have = tuple(int(x) for x in version.split(".")[:2])
    return have < (major, minor)


def _sections(data: bytes) -> dict[str, tuple[int, int, int, int]]:
    """ELF64 little-endian section name -> (offset, size, link, entsize)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = heads[shstrndx][4]
    out = {}
    for h in heads:
        end = data.index(b"\0", names_off + h[0])
        out[data[names_off + h[0]:end].decode()] = (h[4], h[5], h[6], h[9])
    return out


def _cstr(data: bytes, offset: int) -> bytes:
    return data[offset:data.index(b"\0", offset)]


def patch_c23_references(data: bytes) -> bytes:
    """The library with every `__isoc23_NAME` reference turned into `NAME@GLIBC_2.2.5`.

    The new name is the tail of the old one in the string table, so no string moves; the
    GLIBC_2.38 requirement is marked weak, so the loader no longer insists on it."""
    buf = bytearray(data)
    sec = _sections(data)
    if ".gnu.version_r" not in sec or ".dynsym" not in sec:
        return data
    dynstr = sec[".dynstr"][0]
    # Version needs: find the index of GLIBC_2.2.5 and mark GLIBC_2.38 weak.
    classic, off = None, sec[".gnu.version_r"][0]
    while True:
        _, cnt, _, aux, nxt = struct.unpack_from("<HHIII", data, off)
        a = off + aux
        for _ in range(cnt):
            _, flags, other, name, anext = struct.unpack_from("<IHHII", data, a)
            vname = _cstr(data, dynstr + name)
            if vname == _CLASSIC_VERSION:
                classic = other
            if vname == b"GLIBC_2.38":
                struct.pack_into("<H", buf, a + 4, flags | _VER_FLG_WEAK)
            a += anext
        if not nxt:
            break
        off += nxt
    if classic is None:
        return data
    sym_off, sym_size, _, sym_ent = sec[".dynsym"]
    versym = sec[".gnu.version"][0]
    for i in range(sym_size // sym_ent):
        name, _, _, shndx = struct.unpack_from("<IBBH", data, sym_off + i * sym_ent)
        if shndx == 0 and _cstr(data, dynstr + name).startswith(_C23):
            struct.pack_into("<I", buf, sym_off + i * sym_ent, name + len(_C23))
            struct.pack_into("<H", buf, versym + 2 * i, classic)
    return bytes(buf)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ftstudio" / "llama-cpp-compat"


def _compat_copy(package: Path) -> Path:
    """A patched copy of the package's libraries (made once per library version)."""
    libs = sorted(p for p in package.iterdir() if p.name.startswith("lib") and ".so" in p.name)
    digest = hashlib.sha256(b"".join(p.name.encode() + str(p.stat().st_size).encode() for p in libs)).hexdigest()
    folder = _cache_root() / digest[:16]
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        if not done.exists():
            for p in libs:
                tmp = folder / f".{p.name}.tmp"
                tmp.write_bytes(patch_c23_references(p.read_bytes()))
                os.chmod(tmp, 0o755)
                os.replace(tmp, folder / p.name)
            done.write_text("ok\n")
    return folder


def library_path() -> Path:
    """The libllama to open: the wheel's own, or its patched copy on glibc older than 2.38."""
    package = _package_dir()
    lib = package / "libllama.so"
    if not lib.exists():
        raise LlamaCppMissing(f"The llama.cpp package in {package} has no libllama.so for this system, so the "
                              f"GGUF cannot be checked by llama.cpp. Reinstall it with `{INSTALL_HINT}`.")
    if platform.system() == "Linux" and _glibc_older_than(2, 38):
        return _compat_copy(package) / "libllama.so"
    return lib


def load() -> Any:
    """The opened llama.cpp library (cffi), with its backends initialised; opened once per process."""
    if "lib" in _loaded:
        return _loaded["lib"]
    path = library_path()
    try:
        lib = ffi().dlopen(str(path))
    except OSError as e:
        raise LlamaCppMissing(f"llama.cpp's library {path} could not be opened on this system ({e}). Install a "
                              f"llama-cpp-py-sync build for this platform (`{INSTALL_HINT}`) and export again.") from e
    lib.llama_backend_init()
    _loaded["lib"] = lib
    return lib


def available() -> Optional[str]:
    """None when llama.cpp can be loaded here, else the sentence why not."""
    try:
        load()
    except UserError as e:
        return str(e)
    return None


def drop_cache() -> None:
    shutil.rmtree(_cache_root(), ignore_errors=True)
