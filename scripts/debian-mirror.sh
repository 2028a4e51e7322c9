#!/usr/bin/env bash
# Prints the Debian mirror the host's apt uses (the first URI serving the
# "main" archive, not the security one), from /etc/apt/sources.list and
# /etc/apt/sources.list.d/ (both the one-line and the deb822 format).
set -euo pipefail
shopt -s nullglob
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  # deb [options] URI suite components
  uri="$(sed -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2 }' \
    | grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)"
  if [ -n "$uri" ]; then echo "${uri%/}"; exit 0; fi
done
for f in /etc/apt/sources.list.d/*.sources; do
  uri="$(awk 'tolower($1) == "uris:" { print $2 }' "$f" | grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)"
  if [ -n "$uri" ]; then echo "${uri%/}"; exit 0; fi
done
echo "no Debian mirror found in the apt sources" >&2
exit 1
