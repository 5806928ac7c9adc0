/* Test-only shim for Wine 8.0, which lacks ProcessPrng (bcryptprimitives.dll); Rust's standard
   library imports it on Windows. Forwards to RtlGenRandom (advapi32!SystemFunction036). Built by
   tests/wine/run.sh into the Wine prefix used by the tests; never shipped with winbundle.exe. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
