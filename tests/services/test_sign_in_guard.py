"""The sign-in lock-out holds across app processes: parallel guesses from several processes are counted one at a
time through the username's row in ``sign_in_guards`` (issue 15; SECURITY.md)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from db.models import AuditEvent, SignInGuard
from services.auth import MAX_FAILURES, provision_user
from tests.ui import REPO_ROOT

GUESSER = """
import sys, time
from pathlib import Path
from db.engine import make_engine, make_session_factory, run_transaction
from services.auth import authenticate
from services.errors import PermissionDenied
url, go, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
factory = make_session_factory(make_engine(url))
ready.touch()  # imported and connected: waiting at the start line
while not go.exists():
    time.sleep(0.01)
try:
    run_transaction(factory, lambda s: authenticate(s, "bea", "wrong password, a guess"))
except PermissionDenied as exc:
    print(exc)
"""


def test_parallel_guesses_from_several_processes_are_counted_one_at_a_time(factory, db_url, tmp_path: Path):
    with factory.begin() as s:
        provision_user(s, "bea", "correct horse battery", "broker", via="test")
    go = tmp_path / "go"
    n = MAX_FAILURES + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GUESSER, db_url, str(go), str(tmp_path / f"ready-{i}")],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("ready-*"))) < n:  # every process at the start line, however slow the machine
        assert all(p.poll() is None for p in procs), "a guessing process ended before the start"
        assert time.monotonic() < deadline, "the guessing processes did not start in 300 s"
        time.sleep(0.05)
    go.touch()
    answers = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    with factory() as s:
        count = {
            action: s.scalar(select(func.count()).where(AuditEvent.action == action))
            for action in ("sign_in_failed", "sign_in_throttled")
        }
        guard = s.get(SignInGuard, "bea")
    assert count == {"sign_in_failed": MAX_FAILURES, "sign_in_throttled": n - MAX_FAILURES}, answers
    assert sum("Too many failed sign-ins" in a for a in answers) == n - MAX_FAILURES
    assert guard is not None
