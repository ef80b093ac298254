#!/bin/sh
# A long test with a child process, for --timeout and cancel.
echo "starting a slow test"
sleep 600 &
i=0
while [ "$i" -lt 600 ]; do
  echo "tick $i"
  i=$((i + 1))
  sleep 1
done
