#!/bin/sh
# A test that fails: testfleet records NONZERO_EXIT with exit_code 3.
echo "about to fail" >&2
mkdir -p artifacts && echo "partial results" > artifacts/partial.txt
exit 3
