#!/bin/sh
# Print a letter, wait a moment, print it in upper case (runmaker4's example).
letter=${1:?usage: letter.sh LETTER}
echo "$letter"
sleep "${LETTER_SLEEP:-1}"
echo "$letter" | tr '[:lower:]' '[:upper:]'
