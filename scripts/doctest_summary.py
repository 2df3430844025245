#!/usr/bin/env python3
"""Sums doctest's per-suite summaries in BUILD/meson-logs/testlog.json into one line,
"doctest: N passed, N failed, N skipped[ (LABEL)]", followed by "; script tests passed: NAMES"
when tests that are not doctest binaries (tests/test_mpi.sh) ran; exits 1 when anything failed.
A suite that ended without doctest's summary (crash, sanitizer abort, timeout) or printed
a ThreadSanitizer warning counts as one failure.
Usage: scripts/doctest_summary.py BUILD [LABEL]"""
import json
import re
import sys

build = sys.argv[1]
label = f" ({sys.argv[2]})" if len(sys.argv) > 2 else ""
passed = failed = skipped = 0
scripts_ok = []  # tests without doctest's summary that passed (shell-script tests)
with open(build + "/meson-logs/testlog.json") as f:
    for line in f:
        rec = json.loads(line)
        out = rec.get("stdout", "") + (rec.get("stderr") or "")
        m = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed \|\s*(\d+) skipped", out)
        if m:
            passed += int(m.group(2)); failed += int(m.group(3)); skipped += int(m.group(4))
        elif rec.get("result") != "OK":
            failed += 1
        elif "[doctest]" not in out:
            scripts_ok.append(rec.get("name", "?"))
        if "WARNING: ThreadSanitizer" in out:
            failed += 1
scripts = f"; script tests passed: {', '.join(scripts_ok)}" if scripts_ok else ""
print(f"doctest: {passed} passed, {failed} failed, {skipped} skipped{label}{scripts}")
sys.exit(1 if failed or (passed == 0 and not scripts_ok) else 0)
