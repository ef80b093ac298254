#!/bin/sh
# A tiny test runner in POSIX sh: each test_* function is a case; the results go to
# artifacts/junit.xml as JUnit XML, which testfleet summarizes into the run's `tests`
# (`testfleet report` merges several machines' runs). Exits 1 when a case failed, like a real
# test runner, so the run ends failed/NONZERO_EXIT and its summary says which case.
mkdir -p artifacts
cases=''
n_failed=0

test_arithmetic() {
  [ "$((6 * 7))" = 42 ] || { echo "expected 42, got $((6 * 7))"; return 1; }
}

test_tmp_is_writable() {
  tmp=$(mktemp) || { echo "mktemp failed"; return 1; }
  echo data > "$tmp" && rm -f "$tmp"
}

test_uname_reports_a_kernel() {
  kernel=$(uname -s)
  [ -n "$kernel" ] || { echo "uname -s printed nothing"; return 1; }
}

test_greeting_has_both_words() {
  # A known bug, left in so that the report shows a failure.
  greeting=$(printf 'hello')
  [ "$greeting" = "hello world" ] || { echo "expected 'hello world', got '$greeting'"; return 1; }
}

test_windows_drive_letters() {
  # Exit status 2 means skipped.
  case $(uname -s) in
    MINGW* | MSYS* | CYGWIN*) [ -d /c ] || { echo "no /c drive"; return 1; } ;;
    *) echo "only meaningful on Windows"; return 2 ;;
  esac
}

xml_escape() {
  sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'
}

for name in test_arithmetic test_tmp_is_writable test_uname_reports_a_kernel \
            test_greeting_has_both_words test_windows_drive_letters; do
  out=$("$name" 2>&1)
  status=$?
  message=$(printf '%s' "$out" | head -n 1 | xml_escape)
  case $status in
    0) cases="$cases<testcase classname=\"examples.junit\" name=\"$name\" time=\"0.001\"/>" ;;
    2) cases="$cases<testcase classname=\"examples.junit\" name=\"$name\" time=\"0\"><skipped message=\"$message\"/></testcase>" ;;
    *) n_failed=$((n_failed + 1))
       cases="$cases<testcase classname=\"examples.junit\" name=\"$name\" time=\"0.001\"><failure message=\"$message\">$(printf '%s' "$out" | xml_escape)</failure></testcase>" ;;
  esac
  echo "$name: $(case $status in 0) echo ok ;; 2) echo skipped ;; *) echo FAILED ;; esac)"
done

printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="examples/junit"><testsuite name="examples.junit">%s</testsuite></testsuites>\n' \
  "$cases" > artifacts/junit.xml
[ "$n_failed" -eq 0 ]
