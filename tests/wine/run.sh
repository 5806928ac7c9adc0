#!/usr/bin/env bash
# Runs a Windows executable under Wine 8 (cargo's runner for x86_64-pc-windows-gnu in .ci/run,
# and tests/wine.sh). Keeps a Wine prefix under target/, and puts the test-only ProcessPrng shim
# (tests/wine/bcryptprimitives.c) in its system32: Wine 8.0 lacks that function, which Rust's
# standard library imports. The shim is never shipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export WINEPREFIX=${WINEPREFIX:-$root/target/wine-prefix}
export WINEDEBUG=${WINEDEBUG:--all}
wine=${WINE:-/usr/lib/wine/wine64}
sys32="$WINEPREFIX/drive_c/windows/system32"
if [ ! -f "$sys32/bcryptprimitives.dll" ] || [ "$root/tests/wine/bcryptprimitives.c" -nt "$sys32/bcryptprimitives.dll" ]; then
  if [ ! -d "$sys32" ]; then "$wine" wineboot -i >/dev/null 2>&1 || true; fi
  x86_64-w64-mingw32-gcc -shared -O2 -o "$sys32/bcryptprimitives.dll" "$root/tests/wine/bcryptprimitives.c" -ladvapi32
fi
# One wineserver for the whole run (it outlives each test binary until `wineserver -k`): with
# Wine's default, the server quits a few seconds after its last client, and a test binary started
# just then fails with "wine client error:0: recvmsg: Connection reset by peer" (seen once in CI).
"$(dirname "$wine")/wineserver" -p 2>/dev/null || true
exec "$wine" "$@"
