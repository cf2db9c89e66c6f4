/* A native ucrtbase.dll for Wine: the six complex-number accessors that Wine's ucrtbase leaves unimplemented
 * (crealf, cimagf, creal, cimag, creall, cimagl: numpy 2.x and scipy.special import them), every other export
 * forwarded to Wine's own ucrtbase, copied next to this one as ucrtbase_wine.dll.
 * installer/wine/build_wine_helpers.sh writes the .def file (the forwarders) from Wine's export list and links this.
 *
 * Microsoft's <complex.h> types are structs: _Fcomplex {float _Val[2]} (8 bytes: passed in a register on x64),
 * _Dcomplex {double _Val[2]} and _Lcomplex (16 bytes: passed by reference). MSVC's long double is a double, so the
 * long double accessors take and return doubles. gcc follows the same Windows x64 convention for these structs.
 * The functions have tw_ names (gcc knows crealf etc. as built-ins with other types); the .def exports them under
 * the C library's names. No C runtime is linked: this DLL must not import the library it replaces. */
typedef struct { float val[2]; } tw_fcomplex;
typedef struct { double val[2]; } tw_dcomplex;

float tw_crealf(tw_fcomplex z) { return z.val[0]; }
float tw_cimagf(tw_fcomplex z) { return z.val[1]; }
double tw_creal(tw_dcomplex z) { return z.val[0]; }
double tw_cimag(tw_dcomplex z) { return z.val[1]; }
double tw_creall(tw_dcomplex z) { return z.val[0]; }
double tw_cimagl(tw_dcomplex z) { return z.val[1]; }

int __stdcall tw_dll_entry(void *instance, unsigned long reason, void *reserved)
{
    (void)instance; (void)reason; (void)reserved;
    return 1;
}
