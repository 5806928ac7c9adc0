#!/usr/bin/env bash
# The Windows build under Wine 8: what can be proven without Windows.
# - winbundle.exe needs no DLL beside Windows' own, and every DLL it imports that is not a
#   KnownDLL is named in docs/windows.md (those are looked for in the exe's folder first);
# - a vssapi.dll planted beside winbundle.exe is never loaded (Wine told to prefer native DLLs,
#   as Windows does; a plain LoadLibrary from the same folder does load it);
# - a drive letter pointing at a volume image (`$WINEPREFIX/dosdevices/x::`) is read as a live
#   volume through the raw, sector-aligned path: `bundle-instance X: --snapshot none` (and
#   `\\.\X:`) give data objects identical to the Linux build's bundle of the same volume, and a
#   manifest equal but for times, ids and the source's name;
# - `--snapshot vss` (the default) fails under Wine, which has no VSS, naming VSS and the HRESULT,
#   with nothing written and the task failed;
# - an image file bundles to the same object as on Linux, also with every read checked for
#   alignment (WINBUNDLE_STRICT_ALIGNMENT);
# - `inspect X:` reports the volume and says a snapshot would be taken;
# - Ctrl-C (SIGINT, which Wine delivers as CTRL_C_EVENT) stops a bundle that waits on a silent
#   server: exit 130, the task failed with Cancelled.
# Needs: a Linux winbundle (WINBUNDLE, default target/release/winbundle) and a winbundle.exe (WINBUNDLE_EXE, default the release build;
# .ci/run passes the one its Wine test run built), wine64, mingw-w64 (for the test-only
# ProcessPrng shim), zstd, python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lin=${WINBUNDLE:-$root/target/release/winbundle}
exe=${WINBUNDLE_EXE:-$root/target/x86_64-pc-windows-gnu/release/winbundle.exe}
work=$(mktemp -d)
export WINEPREFIX="$work/prefix"
export AWS_EC2_METADATA_DISABLED=true # no metadata service to ask under Wine
trap '/usr/lib/wine/wineserver -k 2>/dev/null; rm -rf "$work"' EXIT # (run.sh keeps a wineserver for the prefix)
wine() { "$root/tests/wine/run.sh" "$exe" "$@"; }
pass=0
fail=0
check() { # WINE_CHECKS=text runs only the checks whose name contains it
  local name=$1; shift
  if [ -n "${WINE_CHECKS:-}" ] && [[ "$name" != *"$WINE_CHECKS"* ]]; then return 0; fi
  if "$@" >"$work/out.txt" 2>&1; then
    pass=$((pass + 1)); echo "ok   wine: $name"
  else
    fail=$((fail + 1)); echo "FAIL wine: $name"; sed 's/^/     /' "$work/out.txt" | tail -20
  fi
}

same_manifest() { # a b: equal but for times, ids and the source's name
  python3 - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for m in (a, b):
    for k in ("bundle_id", "instance_id", "start_time", "end_time"):
        m.pop(k)
    m["source"].pop("path")
assert a == b, (a, b)
PY
}

self_contained() { # only Windows' own DLLs
  local dlls; dlls=$(x86_64-w64-mingw32-objdump -p "$exe" | awk '/DLL Name/ {print tolower($3)}' | sort -u)
  echo "$dlls"
  ! grep -E 'libgcc|libstdc|libwinpthread|zstd|vcruntime' <<<"$dlls"
}

# The values of HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\KnownDLLs on 64-bit
# Windows 10 / Server 2016 and later (Server 2022 is build 20348 of the same line). Checked
# against a dump of that key from a real 64-bit Windows 10 machine, printed in
# https://github.com/gil9red/SimplePyScripts/blob/2b0b79b000cd6cdd39c748387df3a2077a4c3b08/winreg__examples/get_known_dlls.py
# (39 values: these 32, DllDirectory, DllDirectory32, and IERTUTIL, LPK, URLMON, USP10, WININET,
# which come after DllDirectory32, i.e. were added to that machine later; Windows 7 listed them;
# not counted here, the safe side: a DLL wrongly left out is only named in the README). The \KnownDlls object directory the loader actually uses also
# holds what these import (bcrypt.dll, bcryptPrimitives.dll, CRYPT32.dll, kernelbase.dll,
# ucrtbase.dll, ...: dumps in https://github.com/lucasg/Dependencies/issues/113 and
# https://github.com/microsoft/ebpf-for-windows/issues/2861); winbundle does not count on that,
# so those stay named in the README. The native workflow compares with the runner's own key.
# ntdll.dll is mapped before any search, and api-ms-win-* names are API sets the loader resolves
# without searching.
known_dlls="advapi32 clbcatq combase comdlg32 coml2 difxapi gdi32 gdiplus imagehlp imm32 kernel32 msctf msvcrt
normaliz nsi ole32 oleaut32 psapi rpcrt4 sechost setupapi shcore shell32 shlwapi user32 wldap32 ws2_32
wow64 wow64win wow64cpu wowarmhw xtajit"
imports_known_or_documented() {
  local dlls dll missing=0
  dlls=$(x86_64-w64-mingw32-objdump -p "$exe" | awk '/DLL Name/ {print tolower($3)}' | sort -u)
  # The section of docs/windows.md that lists them.
  sed -n '/^## DLLs winbundle.exe loads/,/^## Native/p' "$root/docs/windows.md" >"$work/dll-section.md"
  [ -s "$work/dll-section.md" ]
  for dll in $dlls; do
    case "$dll" in ntdll.dll | api-ms-win-*) continue ;; esac
    if grep -qw "${dll%.dll}" <<<"$known_dlls"; then continue; fi
    if grep -qi "\`$dll\`" "$work/dll-section.md"; then
      echo "not a KnownDLL, named in docs/windows.md: $dll"
    else
      echo "not a KnownDLL and not named in docs/windows.md: $dll"; missing=1
    fi
  done
  [ "$missing" = 0 ]
}

planted_vssapi() { # a vssapi.dll beside the exe, whose DllMain leaves a marker, is never loaded
  local d="$work/planted" rc=0
  mkdir -p "$d"
  cp "$exe" "$d/winbundle.exe"
  cat >"$d/vssapi.c" <<'C'
#include <windows.h>
/* Leaves "planted-loaded" in its own folder when a process loads it. */
BOOL WINAPI DllMain(HINSTANCE self, DWORD reason, LPVOID reserved) {
    char path[MAX_PATH];
    DWORD n;
    HANDLE f;
    (void)reserved;
    if (reason != DLL_PROCESS_ATTACH) return TRUE;
    n = GetModuleFileNameA(self, path, MAX_PATH - 16);
    while (n > 0 && path[n - 1] != '\\') n--;
    lstrcpyA(path + n, "planted-loaded");
    f = CreateFileA(path, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL);
    if (f != INVALID_HANDLE_VALUE) CloseHandle(f);
    return TRUE;
}
C
  x86_64-w64-mingw32-gcc -shared -O2 -o "$d/vssapi.dll" "$d/vssapi.c"
  printf '#include <windows.h>\nint main(void) { return LoadLibraryA("vssapi.dll") ? 0 : 1; }\n' >"$d/probe.c"
  x86_64-w64-mingw32-gcc -O2 -o "$d/probe.exe" "$d/probe.c"
  # Native DLLs first, as on Windows (Wine otherwise prefers its built-in vssapi whatever the
  # caller does). The control: a bare-name LoadLibrary from that folder loads the planted DLL.
  WINEDLLOVERRIDES="vssapi=n,b" "$root/tests/wine/run.sh" "$d/probe.exe"
  [ -f "$d/planted-loaded" ] || { echo "control failed: the planted DLL was not loaded by a bare-name LoadLibrary"; return 1; }
  rm "$d/planted-loaded"
  WINEDLLOVERRIDES="vssapi=n,b" "$root/tests/wine/run.sh" "$d/winbundle.exe" bundle-instance X: \
    --bucket bkt --prefix planted --local-store "Z:$work/planted-store" >/dev/null 2>"$work/err.txt" || rc=$?
  cat "$work/err.txt"
  [ "$rc" = 1 ]
  grep -q "Volume Shadow Copy (VSS)" "$work/err.txt"
  if [ -f "$d/planted-loaded" ]; then echo "winbundle.exe loaded the vssapi.dll planted beside it"; return 1; fi
}

zstd -d -q -f "$root/testdata/bare-volume.img.zst" -o "$work/bare.img"
"$lin" bundle-instance "$work/bare.img" --bucket bkt --prefix ref --local-store "$work/linux" -q >/dev/null
"$root/tests/wine/run.sh" cmd /c exit 0 >/dev/null 2>&1 || true # creates the prefix
ln -sfn "$work/bare.img" "$WINEPREFIX/dosdevices/x::"

drive_letter() { # name-as-given store: the same bucket and prefix as the Linux bundle, in another store
  wine bundle-instance "$1" --snapshot none --bucket bkt --prefix ref --local-store "Z:$work/$2" >"$work/task.json"
  python3 - "$work/task.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
assert v["BundleTask"]["State"] == "complete", v
r = v["Bundle"]["SourceReads"]
# The raw-handle path: sector-aligned reads (Wine answers no IOCTL: the size and sector size
# came from the fall-backs), every unaligned read widened through an aligned buffer.
assert r["SectorAlignment"] >= 512 and r["BouncedRequests"] > 0, r
# One handle per reader thread (a synchronous handle serves one request at a time).
assert r["Handles"] >= 2 and r["MaxInFlight"] >= 1, r
print("SourceReads:", r)
PY
  cmp "$work/linux/bkt/ref.image.zst" "$work/$2/bkt/ref.image.zst"
  same_manifest "$work/linux/bkt/ref.manifest.json" "$work/$2/bkt/ref.manifest.json"
}

vss_under_wine() { # no VSS in Wine: a clear failure, nothing written, the task failed
  local rc=0
  wine bundle-instance X: --bucket bkt --prefix vss --local-store "Z:$work/vss" >"$work/task.json" 2>"$work/err.txt" || rc=$?
  cat "$work/err.txt"
  [ "$rc" = 1 ]
  grep -q "Volume Shadow Copy (VSS)" "$work/err.txt"
  grep -q "HRESULT 0x80004001 (E_NOTIMPL)" "$work/err.txt"
  grep -q '"State": "failed"' "$work/task.json"
  grep -q '"Code": "SnapshotFailed"' "$work/task.json"
  [ -z "$(find "$work/vss" -type f 2>/dev/null)" ]
}

image_file() { # an image file, with and without strict alignment checks
  wine bundle-instance "Z:$work/bare.img" --bucket bkt --prefix img --local-store "Z:$work/wine" -q >/dev/null
  cmp "$work/linux/bkt/ref.image.zst" "$work/wine/bkt/img.image.zst"
  WINBUNDLE_STRICT_ALIGNMENT=4096 wine bundle-instance "Z:$work/bare.img" --bucket bkt --prefix strict \
    --local-store "Z:$work/wine" -q >/dev/null
  cmp "$work/linux/bkt/ref.image.zst" "$work/wine/bkt/strict.image.zst"
  # And the Linux build restores what the Windows build wrote.
  "$lin" restore --bucket bkt --prefix strict --local-store "$work/wine" --output "$work/restored.img" -q
  "$lin" restore --bucket bkt --prefix ref --local-store "$work/linux" --output "$work/ref.img" -q
  cmp "$work/restored.img" "$work/ref.img"
}

inspect_live() {
  wine inspect X: --json >"$work/inspect.json"
  python3 - "$work/inspect.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
assert v["ntfs"]["label"] == "Bare", v["ntfs"]
assert "Volume Shadow Copy snapshot (none was taken now)" in v["live"]["plan"], v["live"]
PY
}

ctrl_c() { # Ctrl-C (Wine turns SIGINT into CTRL_C_EVENT) stops a bundle stuck on a silent server
  python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
    print("accepted", flush=True)
' >"$work/silent.txt" &
  local sink=$! rc=0 pid waited=0
  for _ in $(seq 50); do [ -s "$work/silent.txt" ] && break; sleep 0.1; done
  # run.sh execs Wine, so $! is the Windows process that gets the SIGINT.
  AWS_ACCESS_KEY_ID=AKIAEXAMPLE AWS_SECRET_ACCESS_KEY=secret "$root/tests/wine/run.sh" "$exe" bundle-instance X: \
    --snapshot none --bucket bkt --prefix cc --endpoint-url "http://127.0.0.1:$(head -1 "$work/silent.txt")" \
    --state-dir "Z:$work/cc-state" -q >"$work/task.json" 2>"$work/err.txt" &
  pid=$!
  for _ in $(seq 300); do grep -q accepted "$work/silent.txt" && break; sleep 0.1; done
  sleep 1
  kill -INT "$pid"
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt 30 ]; do sleep 1; waited=$((waited + 1)); done
  wait "$pid" || rc=$?
  kill "$sink"
  cat "$work/err.txt"
  echo "exit status $rc, ${waited}s after Ctrl-C"
  [ "$rc" = 130 ]
  grep -q "stopping" "$work/err.txt"
  grep -q "cancelled" "$work/err.txt"
  grep -q '"State": "failed"' "$work/task.json"
  grep -q '"Code": "Cancelled"' "$work/task.json"
}

check "winbundle.exe needs only Windows' own DLLs" self_contained
check "every DLL winbundle.exe imports is a KnownDLL or named in docs/windows.md" imports_known_or_documented
check "a vssapi.dll planted beside winbundle.exe is not loaded" planted_vssapi
check "bundle-instance X: --snapshot none = the Linux bundle of the same volume" drive_letter X: x
check "bundle-instance \\\\.\\X: --snapshot none = the Linux bundle" drive_letter '\\.\X:' dotx
check "bundle-instance X: with VSS fails clearly (Wine has no VSS), nothing written" vss_under_wine
check "an image file bundles identically, also with strict alignment checks" image_file
check "inspect X: reports the volume and the snapshot plan" inspect_live
check "Ctrl-C stops a bundle waiting on a silent server: exit 130, task failed (Cancelled)" ctrl_c
long_paths() { # a local store deeper than MAX_PATH (260 characters)
  local deep="$work/long"
  for _ in $(seq 1 12); do deep="$deep/a-folder-name-of-thirty-chars"; done
  mkdir -p "$deep"
  [ "${#deep}" -gt 300 ]
  wine bundle-instance "Z:$work/bare.img" --bucket bkt --prefix ref --local-store "Z:$deep" -q >/dev/null
  cmp "$work/linux/bkt/ref.image.zst" "$deep/bkt/ref.image.zst"
  wine verify --bucket bkt --prefix ref --local-store "Z:$deep" -q
}
check "a local store path longer than 260 characters" long_paths
echo "wine: $pass passed, $fail failed"
[ "$fail" = 0 ]
