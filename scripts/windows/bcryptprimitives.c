/*
 * Test-only stand-in for bcryptprimitives.dll, for running the core's Windows test
 * binaries under Wine (scripts/check-windows builds it into the private Wine prefix; it is
 * never shipped or used on real Windows).
 *
 * Why: Rust's standard library on Windows gets its random bytes (HashMap seeds, and through
 * them tempfile's names) from ProcessPrng in bcryptprimitives.dll, which every Windows
 * since 8 has. Wine 8 (Debian 12's) does not provide that DLL, so every Rust test binary
 * fails to start. This forwards ProcessPrng to RtlGenRandom (SystemFunction036 in
 * advapi32), which Wine implements with the host's random source.
 */
#include <windows.h>
#include <ntsecapi.h>

/* Documented to always succeed: returns TRUE. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!RtlGenRandom(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
