#!/bin/sh
# The whole suite in two phases (make test runs this):
#   1. every test not marked `serial`, over $PYTEST_WORKERS processes (3; pytest-xdist, one file per
#      process at a time, so a module's server fixture starts once); most tests wait on a server.
#   2. the `serial` tests alone: they measure latencies and timeouts, or run a Ray cluster, and
#      must not share the 2 cores with another test.
# Then one closing line for both: "tests: N passed, N failed".
# Usage: tools/run-tests.sh PYTHON [pytest args...]   (args go to both phases, e.g. -k or -x)
set -u
PY=$1
shift
# Three processes on two cores: most tests wait on a server starting (TensorFlow's import) or
# answering, and the third keeps the cores busy (the phase: 6:13 with two, 5:21 with three).
WORKERS=${PYTEST_WORKERS:-3}
REPORTS=$(mktemp -d)
trap 'rm -rf "$REPORTS"' EXIT

"$PY" -m pytest -q -p xdist -n "$WORKERS" --dist loadfile -m "not serial" --junitxml="$REPORTS/parallel.xml" "$@" tests
first=$?
"$PY" -m pytest -q -m serial --junitxml="$REPORTS/serial.xml" "$@" tests
second=$?

# pytest exits 5 when a phase selects no test (e.g. a -k that matches only the other phase).
"$PY" - "$REPORTS/parallel.xml" "$REPORTS/serial.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        cases = ET.parse(path).getroot().iter("testcase")
    except (OSError, ET.ParseError):
        continue
    for case in cases:  # one per test, as pytest counts them (a suite's "tests" adds subtests)
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            failed += 1
        elif "skipped" in outcome:
            skipped += 1
        else:
            passed += 1
print(f"tests: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
EOF
for code in $first $second; do
    case $code in 0|5) ;; *) exit "$code" ;; esac
done
[ "$first" = 5 ] && [ "$second" = 5 ] && exit 5
exit 0
