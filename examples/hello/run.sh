#!/bin/sh
# The smallest test: say hello from the remote machine.
echo "hello from $(uname -sn)"
echo "working directory: $(pwd)"
