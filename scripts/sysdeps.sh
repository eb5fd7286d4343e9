#!/usr/bin/env bash
# Install the Debian packages some tests use, when missing and when we can (root + apt).
# Tests that need a missing one skip and say which package would enable them.
set -u
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
{ command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; } || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]} (Debian packages used by the tests)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
    >/tmp/sysdeps.log 2>&1 || echo "apt-get failed (see /tmp/sysdeps.log); tests needing ${need[*]} will skip"
else
  echo "not root: tests needing ${need[*]} will skip (apt-get install ${need[*]})"
fi
exit 0
