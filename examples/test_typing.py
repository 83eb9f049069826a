"""The examples meet the checkers that the module meets, in their strict modes."""

import subprocess
from pathlib import Path

import pytest

from test_mediator import CHECKERS, checker_command, parse_errors

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.checkers
@pytest.mark.parametrize("checker", CHECKERS)
def test_checker_finds_no_error_in_the_examples_and_their_benchmark(checker: str) -> None:
    files = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "examples").rglob("*.py"))]
    files += ["benchmarks/bench_outbox.py"] if (ROOT / "benchmarks/bench_outbox.py").exists() else []
    done = subprocess.run(
        checker_command(checker, files), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert parse_errors(checker, done.stdout) == {}, done.stdout + done.stderr
    # A checker that stopped before it checked anything reports no error lines either.
    assert done.returncode == 0, done.stdout + done.stderr
