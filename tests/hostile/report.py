"""Run the hostile-input corpus (tests/hostile) and print what happened to every case.

    python -m tests.hostile.report [--match TEXT] [--width 100]

Each case runs in a forked child process, so a hostile file that crashes native code (a segfault
in a decoder) or hangs shows up as a row of the table instead of ending the report. Columns: the
case, its category, the expected outcome (the message is a regular expression), the observed
outcome (temporary paths shortened to <tmp>/), whether it was handled as expected, and the
child's peak resident memory. The totals close the table; the exit status is 1 while any case
is not handled (a known bug included).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from tests.hostile.corpus import CASES, Case, Outcome, run_case
from tests.hostile.generators import GoodMedia, make_good_media

CASE_TIMEOUT_SEC = 300


def _child(c: Case, tmp: Path, good: GoodMedia, conn) -> None:
    torch.set_num_threads(1)
    outcome = run_case(c, tmp, good)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    conn.send((outcome, peak_mb))
    conn.close()


def run_isolated(c: Case, tmp: Path, good: GoodMedia) -> tuple[Outcome, float, float]:
    """(observed outcome, peak RSS in MB, seconds) of one case in a forked process."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(c, tmp, good, send))
    start = time.perf_counter()
    proc.start()
    send.close()
    result = None
    if recv.poll(CASE_TIMEOUT_SEC):
        try:
            result = recv.recv()
        except EOFError:  # the child died before sending (a crash in native code)
            result = None
    proc.join(timeout=10)
    seconds = time.perf_counter() - start
    if result is not None:
        return result[0], result[1], seconds
    if proc.is_alive():
        proc.kill()
        proc.join()
        return Outcome("error", "timeout", f"no outcome after {CASE_TIMEOUT_SEC} s"), float("nan"), seconds
    return Outcome("error", "crash", f"the process died with exit code {proc.exitcode}"), float("nan"), seconds


def _cell(text: str, width: int) -> str:
    text = text.replace("|", "\\|").replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--match", default="", help="only cases whose name contains this text")
    parser.add_argument("--width", type=int, default=100, help="characters per expected/observed cell")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.match.lower() in c.name.lower()]
    with tempfile.TemporaryDirectory(prefix="hostile-") as root:
        root_path = Path(root)
        good = make_good_media(root_path / "good")
        baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{len(cases)} cases; each in a forked process (parent RSS {baseline_mb:.0f} MB)\n")
        print("| # | case | category | expected | observed | handled | peak MB | s |")
        print("|---|---|---|---|---|---|---|---|")
        handled = 0
        for i, c in enumerate(cases, 1):
            tmp = root_path / f"case{i:03d}"
            tmp.mkdir()
            observed, peak_mb, seconds = run_isolated(c, tmp, good)
            ok = c.handled(observed)
            handled += ok
            shown = Outcome(observed.kind, observed.subject, observed.message.replace(root + "/", "<tmp>/"))
            verdict = "yes" if ok else ("no (known bug)" if c.known_bug else "no")
            print(
                f"| {i} | {_cell(c.name, 60)} | {c.category} | {_cell(c.describe_expected(), args.width)} "
                f"| {_cell(str(shown), args.width)} | {verdict} | {peak_mb:.0f} | {seconds:.1f} |"
            )
        print(f"\ncases tried / handled: {len(cases)} / {handled}")
        for c in cases:
            if c.known_bug:
                print(f"known bug in '{c.name}': {c.known_bug}")
    return 0 if handled == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
