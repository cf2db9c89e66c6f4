/* A stand-in for Windows' bcryptprimitives.dll, which Wine 8 does not ship: Rust's standard library (since Rust
 * 1.78; e.g. pydantic-core, which napari needs) takes its random numbers from bcryptprimitives!ProcessPrng.
 * Implemented with bcrypt's BCryptGenRandom, which Wine has. build by installer/windows_under_wine.sh (prefix stage). */
typedef long tw_status;
__declspec(dllimport) tw_status __stdcall BCryptGenRandom(void *algorithm, unsigned char *buffer, unsigned long size,
                                                          unsigned long flags);
#define TW_BCRYPT_USE_SYSTEM_PREFERRED_RNG 2UL

int __stdcall tw_process_prng(unsigned char *data, unsigned long long size)
{
    while (size > 0) {
        unsigned long chunk = size > 0x40000000ULL ? 0x40000000UL : (unsigned long)size;
        if (BCryptGenRandom(0, data, chunk, TW_BCRYPT_USE_SYSTEM_PREFERRED_RNG) < 0) return 0;
        data += chunk;
        size -= chunk;
    }
    return 1; /* ProcessPrng always returns TRUE */
}

int __stdcall tw_dll_entry(void *instance, unsigned long reason, void *reserved)
{
    (void)instance; (void)reason; (void)reserved;
    return 1;
}
