"""Time from starting the bundled app to its usable window: runs ``cellpol --selftest`` and notes, from outside the
process, when it prints its "window open" line (so the bootloader, unpacking and imports are counted).

    python3 packaging/measure_startup.py [dist/cellpol/cellpol] [--runs 3]     (any Python 3; under Xvfb or not)
"""

import argparse
import os
import pty
import statistics
import subprocess
import time


def once(exe: str) -> tuple[float, float, int]:
    # stdout on a terminal, so that the app's print() is line-buffered and the line arrives when it is said
    master, slave = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen([exe, "--selftest"], stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    window, buffer = float("nan"), b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        buffer += chunk
        if window != window and b"window open" in buffer:
            window = time.perf_counter() - start
    os.close(master)
    rc = proc.wait()
    return window, time.perf_counter() - start, rc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exe", nargs="?", default="dist/cellpol/cellpol")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    windows = []
    for k in range(args.runs):
        window, total, rc = once(args.exe)
        windows.append(window)
        print(f"run {k + 1}: window open {window:.2f} s after start; selftest {'PASS' if rc == 0 else 'FAIL'} "
              f"in {total:.1f} s")
    print(f"median time to window: {statistics.median(windows):.2f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
