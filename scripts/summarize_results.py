#!/usr/bin/env python3
"""Adds up the results of scripts/test.sh and prints the closing line
`N passed, N failed, N skipped`; exits 1 when anything failed.

Inputs (all optional, missing ones count as nothing ran):
  --cargo-log FILE   output of `cargo test --workspace` (its `test result:` lines)
  --cargo-rc N       its exit code (non-zero with no failed test counts one failure)
  --build-rc N       exit code of `cargo build --bin medrelay` (non-zero counts one failure)
  --e2e-dir DIR      tests/e2e/run.sh results: <name>.tap + <name>.rc, pytest.xml + pytest.rc
  --e2e-rc N         exit code of the namespace wrapper (124/137 = the whole e2e run timed out)
Only the standard library: it runs with the system python3 before any venv exists.
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

CARGO_RE = re.compile(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")
CARGO_FAIL_RE = re.compile(r"^test (\S+) \.\.\. FAILED", re.M)
TAP_COUNT_RE = re.compile(r"^# (pass|fail|skipped|cancelled|todo) (\d+)\s*$", re.M)


class Totals:
    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0
        self.lines: list[str] = []
        self.failures: list[str] = []

    def add(self, label: str, passed: int, failed: int, skipped: int, note: str = "") -> None:
        self.passed += passed
        self.failed += failed
        self.skipped += skipped
        self.lines.append(f"  {label:<28} {passed:>4} passed, {failed:>3} failed, {skipped:>3} skipped{note}")


def read_int(v: str | None) -> int | None:
    return int(v) if v not in (None, "") else None


def cargo(t: Totals, log: Path | None, rc: int | None) -> None:
    if log is None:
        return
    text = log.read_text(errors="replace") if log.exists() else ""
    p = f = s = 0
    for m in CARGO_RE.finditer(text):
        p, f, s = p + int(m[1]), f + int(m[2]), s + int(m[3])
    t.failures += [f"cargo: {name}" for name in CARGO_FAIL_RE.findall(text)]
    note = ""
    if rc not in (None, 0) and f == 0:
        f, note = 1, f"  (cargo test exited {rc} without a failed test: build error?)"
        t.failures.append(f"cargo test --workspace exited {rc}")
    t.add("cargo test --workspace", p, f, s, note)


def node_file(t: Totals, tap: Path, rc_file: Path) -> None:
    name = tap.stem if tap.exists() else rc_file.stem
    rc = read_int(rc_file.read_text().strip()) if rc_file.exists() else None
    text = tap.read_text(errors="replace") if tap.exists() else ""
    counts: dict[str, int] = {}
    for k, v in TAP_COUNT_RE.findall(text):
        counts[k] = int(v)  # the last block is the run's own summary
    if counts:
        p = counts.get("pass", 0)
        f = counts.get("fail", 0) + counts.get("cancelled", 0)
        s = counts.get("skipped", 0) + counts.get("todo", 0)
    else:  # killed before its summary: count the top-level results it did report
        oks = re.findall(r"^(ok|not ok) \d+ - .*?(# (?:SKIP|TODO).*)?$", text, re.M)
        p = sum(1 for k, d in oks if k == "ok" and not d)
        s = sum(1 for k, d in oks if k == "ok" and d)
        f = sum(1 for k, _ in oks if k == "not ok")
    # Only top-level "not ok" lines name failed tests (indented ones are subtests).
    t.failures += [f"e2e {name}: {n}" for n in re.findall(r"^not ok \d+ - (.*)$", text, re.M)]
    note = ""
    if rc is None or (rc != 0 and f == 0):
        f += 1
        why = "timed out" if rc in (124, 137) else f"exited {rc}" if rc is not None else "did not run"
        note = f"  ({name} {why})"
        t.failures.append(f"e2e {name}: {why}")
    t.add(f"e2e {name}", p, f, s, note)


def pytest_results(t: Totals, xml: Path, rc_file: Path) -> None:
    rc = read_int(rc_file.read_text().strip()) if rc_file.exists() else None
    p = f = s = 0
    if xml.exists():
        try:
            root = ET.parse(xml).getroot()
            for case in root.iter("testcase"):
                name = f"{case.get('classname', '')}.{case.get('name', '')}"
                if case.find("failure") is not None or case.find("error") is not None:
                    f += 1
                    t.failures.append(f"pytest {name}")
                elif case.find("skipped") is not None:
                    s += 1
                else:
                    p += 1
        except ET.ParseError:
            pass
    note = ""
    if rc is not None and rc not in (0, 5) and f == 0:
        f += 1
        note = f"  (pytest {'timed out' if rc in (124, 137) else f'exited {rc}'})"
        t.failures.append(f"pytest exited {rc}")
    t.add("e2e pytest (aiortc, HL7 and more)", p, f, s, note)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cargo-log", type=Path)
    ap.add_argument("--cargo-rc")
    ap.add_argument("--build-rc")
    ap.add_argument("--e2e-dir", type=Path)
    ap.add_argument("--e2e-rc")
    a = ap.parse_args()

    t = Totals()
    cargo(t, a.cargo_log, read_int(a.cargo_rc))
    build_rc = read_int(a.build_rc)
    if build_rc not in (None, 0):
        t.add("cargo build --bin medrelay", 0, 1, 0, "  (build failed: e2e not run)")
        t.failures.append("cargo build --bin medrelay")
    if a.e2e_dir and a.e2e_dir.is_dir():
        names = sorted({p.stem for p in a.e2e_dir.glob("*.rc")} - {"pytest"})
        for n in names:
            node_file(t, a.e2e_dir / f"{n}.tap", a.e2e_dir / f"{n}.rc")
        if (a.e2e_dir / "pytest.rc").exists():
            pytest_results(t, a.e2e_dir / "pytest.xml", a.e2e_dir / "pytest.rc")
    e2e_rc = read_int(a.e2e_rc)
    if e2e_rc in (124, 137):
        t.add("e2e (whole run)", 0, 1, 0, "  (timed out)")
        t.failures.append("e2e run timed out")
    elif e2e_rc not in (None, 0, 1):
        t.add("e2e (whole run)", 0, 1, 0, f"  (exited {e2e_rc})")
        t.failures.append(f"e2e run exited {e2e_rc}")

    print("\n=== summary ===")
    print("\n".join(t.lines))
    if t.failures:
        print("failed:")
        print("\n".join(f"  - {x}" for x in t.failures))
    line = f"{t.passed} passed, {t.failed} failed"
    if t.skipped:
        line += f", {t.skipped} skipped"
    print(line)
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
