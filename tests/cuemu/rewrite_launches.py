#!/usr/bin/env python3
"""Turn a CUDA source into C++ that cuemu compiles: rewrite the two CUDA-only syntaxes.

    kernel<<<grid, block, shared, stream>>>(args...)
        -> kernel | ::cuemu::launch({__FILE__, __LINE__}, grid, block, shared, stream)(args...)
    extern __shared__ T name[];
        -> T* name = ::cuemu::dynamic_shared<T>();
    __shared__ T a, b[N];
        -> auto& a = ::cuemu::shared_var<T>(KEY); auto& b = ::cuemu::shared_var<T[N]>(KEY);
       (KEY: the address of a static in a lambda of its own, so one per declaration and per
       template instantiation, as CUDA's shared variables are)

Usage: rewrite_launches.py INPUT.cu OUTPUT.cpp

Line numbers are kept (a ``#line`` directive names the original file, and every rewrite keeps
its newlines), so compiler errors, ``__FILE__``/``__LINE__`` in the emulator's messages and
debuggers point at the .cu file. Fails (exit 1) if a ``<<<``, ``>>>`` or ``__shared__`` is left over in
code, so a construct the patterns do not understand can never compile into something else.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

LAUNCH = re.compile(r"<<<(?P<config>.*?)>>>", re.DOTALL)
DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?(?P<type>[A-Za-z_][\w:<>, ]*?)\s+"
    r"(?:__align__\(\s*\d+\s*\)\s+)?(?P<name>\w+)\s*\[\s*\]\s*;"
)


STATIC_SHARED = re.compile(r"(?m)^(?P<indent>[ \t]*)__shared__\s+(?P<decl>[^;]+);")
DECLARATOR = re.compile(r"^(?P<name>\w+)(?P<dims>(?:\s*\[[^\]]*\])*)$")
KEY = "[] { static char key; return &key; }()"


def split_top_level(text: str) -> list[str]:
    """Split at the commas outside <>, () and []."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def rewrite_shared(match: re.Match[str], path: str, source: str) -> str:
    decl = match.group("decl")
    parts = split_top_level(decl)
    first = re.match(r"^(?P<type>.+?)\s+(?P<rest>\w+(?:\s*\[[^\]]*\])*)$", parts[0], re.DOTALL)
    line = source.count("\n", 0, match.start()) + 1
    if first is None:
        raise SystemExit(f"{path}:{line}: cannot parse the __shared__ declaration '{decl.strip()}'")
    base = " ".join(first.group("type").split())
    out = []
    for declarator in [first.group("rest"), *parts[1:]]:
        d = DECLARATOR.match(declarator)
        if d is None:
            raise SystemExit(f"{path}:{line}: cannot parse the __shared__ declarator '{declarator}'")
        dims = "".join(d.group("dims").split())
        out.append(f"auto& {d.group('name')} = ::cuemu::shared_var<{base}{dims}>({KEY});")
    # Keep the line count, so that later lines keep their numbers.
    return match.group("indent") + " ".join(out) + "\n" * decl.count("\n")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def rewrite(source: str, path: str) -> str:
    out = LAUNCH.sub(
        lambda m: f"| ::cuemu::launch({{__FILE__, __LINE__}}, {m.group('config')})", source
    )
    out = DYNAMIC_SHARED.sub(
        lambda m: f"{m.group('type')}* {m.group('name')} = ::cuemu::dynamic_shared<{m.group('type')}>();",
        out,
    )
    out = STATIC_SHARED.sub(lambda m: rewrite_shared(m, path, out), out)
    code = strip_comments(out)
    for token in ("<<<", ">>>", "__shared__"):
        line = next((i + 1 for i, text in enumerate(code.splitlines()) if token in text), None)
        if line is not None:
            raise SystemExit(f"{path}:{line}: '{token}' left after rewriting the launches")
    return f'#line 1 "{path}"\n' + out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: rewrite_launches.py INPUT.cu OUTPUT.cpp", file=sys.stderr)
        return 2
    src, dst = Path(argv[1]), Path(argv[2])
    text = rewrite(src.read_text(), str(src.resolve()))
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Leave an unchanged output alone, so the build does not recompile it.
    if not dst.exists() or dst.read_text() != text:
        dst.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
