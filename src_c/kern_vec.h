/* Vectors of the streamed elementwise passes: GCC/clang vector extensions of 16
 * bytes (FBN_VLEN values of TC), for non-temporal stores. A per-dtype template:
 * see kern_dtype.h for T, TC, FBN_VINT, FBN_STREAM_V and FBN_SYM.
 *
 * The vector forms of the element functions (fbn_affine_v_<sfx>, fbn_dx_v_<sfx>)
 * do the scalar ones' IEEE operations in the same order, so results are bitwise
 * those of the cached path (but for a NaN's sign and payload, which C leaves to
 * the order of commutative operations). */
#if FBN_CAN_STREAM
typedef TC FBN_SYM(vec) __attribute__((vector_size(16)));
typedef FBN_VINT FBN_SYM(ivec) __attribute__((vector_size(16)));

/* Loads FBN_VLEN values from p, unaligned (a narrower T: each converted). */
FBN_INLINE FBN_SYM(vec) FBN_SYM(vload)(const T *p) {
    FBN_SYM(vec) v;
#ifdef FBN_NARROW
    for (int j = 0; j < FBN_VLEN; j++) v[j] = FBN_LD(p[j]);
#else
    memcpy(&v, p, sizeof v);
#endif
    return v;
}

FBN_INLINE FBN_SYM(vec) FBN_SYM(vsplat)(TC s) { /* not 0 + s, which turns -0 into +0 */
    FBN_SYM(vec) v;
    for (int j = 0; j < FBN_VLEN; j++) v[j] = s;
    return v;
}

/* Lanewise mask ? a : b (mask lanes all ones or all zeros, as comparisons give). */
FBN_INLINE FBN_SYM(vec) FBN_SYM(vselect)(FBN_SYM(ivec) mask, FBN_SYM(vec) a, FBN_SYM(vec) b) {
    return (FBN_SYM(vec))(((FBN_SYM(ivec))a & mask) | ((FBN_SYM(ivec))b & ~mask));
}

/* fbn_affine1_<sfx> on a vector. */
FBN_INLINE FBN_SYM(vec) FBN_SYM(affine_v)(FBN_SYM(vec) x, FBN_SYM(vec) shift,
                                          FBN_SYM(vec) scale, FBN_SYM(vec) bias, int relu) {
    const FBN_SYM(vec) zero = {0};
    FBN_SYM(vec) v = (x - shift) * scale + bias;
    return relu ? FBN_SYM(vselect)((FBN_SYM(ivec))(v < zero), zero, v) : v;
}

/* fbn_xaffine1_<sfx> on a vector (act and res constants). */
FBN_INLINE FBN_SYM(vec) FBN_SYM(xaffine_v)(FBN_SYM(vec) x, FBN_SYM(vec) z, FBN_SYM(vec) shift,
                                           FBN_SYM(vec) scale, FBN_SYM(vec) bias,
                                           FBN_SYM(vec) slope, const int act, const int res) {
    const FBN_SYM(vec) zero = {0};
    FBN_SYM(vec) v = (x - shift) * scale + bias;
    if (res) v = v + z;
    if (act == 2) return FBN_SYM(vselect)((FBN_SYM(ivec))(v > zero), v, v * slope);
    return act ? FBN_SYM(vselect)((FBN_SYM(ivec))(v < zero), zero, v) : v;
}

/* dy through a leaky ReLU's mask (fbn_masked_x_<sfx> with act 2), on a vector. */
FBN_INLINE FBN_SYM(vec) FBN_SYM(leaky_masked_v)(FBN_SYM(vec) dy, FBN_SYM(vec) x,
                                                FBN_SYM(vec) shift, FBN_SYM(vec) scale,
                                                FBN_SYM(vec) bias, FBN_SYM(vec) slope) {
    const FBN_SYM(vec) zero = {0};
    return FBN_SYM(vselect)((FBN_SYM(ivec))((x - shift) * scale + bias > zero), dy, dy * slope);
}

/* fbn_dx1_<sfx> on a vector. */
FBN_INLINE FBN_SYM(vec) FBN_SYM(dx_v)(FBN_SYM(vec) dy, FBN_SYM(vec) x, FBN_SYM(vec) shift,
                                      FBN_SYM(vec) scale, FBN_SYM(vec) bias, int relu,
                                      FBN_SYM(vec) k_dy, FBN_SYM(vec) k_x,
                                      FBN_SYM(vec) mean_dy, FBN_SYM(vec) k_0,
                                      FBN_SYM(vec) invstd, int eval) {
    const FBN_SYM(vec) zero = {0};
    FBN_SYM(vec) g = dy;
    if (relu) g = FBN_SYM(vselect)((FBN_SYM(ivec))((x - shift) * scale + bias > zero), dy, zero);
    FBN_SYM(vec) xterm = eval ? zero : k_x * ((x - shift) * invstd);
    return k_dy * (g - mean_dy) + xterm + k_0;
}
#endif
