#!/usr/bin/env bash
# lib.exe's arguments (`-out:LIB -nologo OBJ...`) for GNU ar: lets `cargo clippy --target
# x86_64-pc-windows-msvc` build the C parts of dependencies (zstd, ring) with mingw-w64 on Linux.
# Only for that type check: nothing it makes is linked or shipped.
out=; files=()
for a in "$@"; do
  case "$a" in -out:*) out=${a#-out:} ;; -nologo) ;; *) files+=("$a") ;; esac
done
exec x86_64-w64-mingw32-ar crs "$out" "${files[@]}"
