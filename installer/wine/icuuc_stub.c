/* A stand-in for Windows 10's system icuuc.dll, which Wine does not ship and Qt 6's Qt6Core.dll imports.
 * Qt uses ICU only for text codecs beyond UTF-8/UTF-16/Latin-1: ucnv_open fails (U_FILE_ACCESS_ERROR), so Qt
 * treats every other codec as unavailable. build_wine_helpers.sh exports each further function that Qt6Core.dll
 * imports from icuuc.dll as tw_unavailable, which returns 0 (NULL, FALSE) and sets a UErrorCode it cannot see:
 * Qt reaches those only with a converter that ucnv_open returned. */
typedef int tw_uerror;
#define TW_U_FILE_ACCESS_ERROR 4

void *tw_ucnv_open(const char *name, tw_uerror *error)
{
    (void)name;
    if (error) *error = TW_U_FILE_ACCESS_ERROR;
    return 0;
}

long long tw_unavailable(void) { return 0; }

int __stdcall tw_dll_entry(void *instance, unsigned long reason, void *reserved)
{
    (void)instance; (void)reason; (void)reserved;
    return 1;
}
