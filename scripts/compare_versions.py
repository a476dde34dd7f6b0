"""Print the installed packages whose version differs from constraints.txt (what `make
check-latest` moved), one line each: name, tested version, installed version."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def main(constraints: str) -> int:
    moved = 0
    for line in Path(constraints).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, tested = line.split("==", 1)
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        if installed != tested:
            moved += 1
            print(f"{name:32s} tested {tested:16s} now {installed}")
    print(f"{moved} package(s) differ from {constraints}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt"))
