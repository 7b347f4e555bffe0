#!/usr/bin/env python3
"""List functions longer than a limit (lines, lizard's `length`) in C++ and CUDA sources.

lizard reads .cpp/.hpp itself but not .cu/.cuh, so every file is handed to it as C++ source.
Usage: tools/function_lengths.py [--limit 80] [--check] PATH...   (folders are searched)
--check: exit 1 when a function is over the limit (tools/test.sh's main stage).
"""
import argparse
import os
import sys

import lizard

EXTENSIONS = (".hpp", ".cpp", ".h", ".cc", ".cu", ".cuh")


def sources(paths):
    for p in paths:
        if os.path.isfile(p):
            yield p
            continue
        for root, _, files in os.walk(p):
            for f in sorted(files):
                if f.endswith(EXTENSIONS):
                    yield os.path.join(root, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("paths", nargs="+")
    a = ap.parse_args()
    long_ones = []
    for path in sorted(sources(a.paths)):
        with open(path, encoding="utf-8") as fh:
            code = fh.read()
        info = lizard.analyze_file.analyze_source_code(path + ".cpp" if path.endswith((".cu", ".cuh")) else path, code)
        for fn in info.function_list:
            if fn.length > a.limit:
                long_ones.append((path, fn.start_line, fn.long_name.split("(")[0], fn.length))
    for path, line, name, length in long_ones:
        print(f"{path}:{line}: {name}: {length} lines")
    print(f"{len(long_ones)} function(s) over {a.limit} lines")
    return 1 if a.check and long_ones else 0


if __name__ == "__main__":
    sys.exit(main())
