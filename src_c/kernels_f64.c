/* The kernel templates (kern_dtype.h, which lists the parameters) for float64
 * data: one translation unit per dtype (see kernels.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "fastbn.h"
#include "half.h"
#include "plan.h"

#define FBN_SFX f64
#define T double
#define TC double
#define FBN_VINT int64_t
#include "kern_dtype.h"
