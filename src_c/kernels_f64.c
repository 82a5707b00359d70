/* The kernel templates (kern_dtype.h, which lists the parameters) for float64
 * data: one translation unit per dtype (see kernels.c). */
#define FBN_SFX f64
#define T double
#define TC double
#define FBN_VINT int64_t
#include "kern_dtype.h"
