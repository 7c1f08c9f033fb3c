"""The examples run end to end on the current backend (briefly)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs_and_reports_every_domain():
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "quickstart.py"),
         "--epochs", "1", "--methods", "adam,tram-x"],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split() for line in completed.stdout.splitlines()]
    table = {row[0]: [float(a) for a in row[1:]] for row in rows if row[0] in ("adam", "tram-x")}
    assert sorted(table) == ["adam", "tram-x"]
    assert all(len(a) == 2 and all(0 <= v <= 1 for v in a) for a in table.values())
