/* The kernel templates (kern_dtype.h, which lists the parameters) for float32
 * data: one translation unit per dtype (see kernels.c). */
#define FBN_SFX f32
#define T float
#define TC float
#define FBN_VINT int32_t
#include "kern_dtype.h"
