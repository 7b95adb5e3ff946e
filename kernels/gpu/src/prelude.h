/* prelude.h: the few macros that let one kernel source compile as OpenCL C (pyopencl) and as
 * CUDA C++ (CuPy's NVRTC, or hipRTC on ROCm builds of CuPy).
 *
 * Kernel files (*.cl) are written in the common subset of the two languages: C89-style functions,
 * scalar types, explicit address spaces through these macros. Nothing here may differ in meaning
 * between the dialects except the spelling, so that every kernel proven on PoCL (OpenCL on the CPU)
 * in CI computes the same thing through CUDA. f16 conversions, for that reason, are written with
 * integer operations rather than each dialect's intrinsics.
 *
 *   KERNEL    an entry point            GLOBAL / LOCAL  address spaces of pointers
 *   SHARED    a work-group array        LPTR            qualifier of a pointer into SHARED memory
 *   DEVICE    a helper function         BARRIER         work-group barrier (local memory)
 *   GID(d) LID(d) GRP(d) LSZ(d) NGRP(d) NDRange indices, d = 0 (fastest), 1, 2
 *   FMUL_RN(a, b) FADD_RN(a, b)        a product / sum rounded on its own, never fused into an FMA:
 *             NVRTC contracts a*b + c into fma by default (--fmad=true), OpenCL compilers may too;
 *             where the reference rounds each step (RoPE's angles, which grow to thousands of radians,
 *             so one rounding more or less moves cos/sin by 1e-4), the kernels spell it out.
 */
#ifndef GGUFPY_PRELUDE_H
#define GGUFPY_PRELUDE_H

#ifdef __OPENCL_VERSION__
/* ---------------------------------------------------------------- OpenCL C */
#define KERNEL __kernel
#define GLOBAL __global
#define SHARED __local
#define LPTR __local
#define DEVICE static inline
#define BARRIER barrier(CLK_LOCAL_MEM_FENCE)
#define GID(d) ((int)get_global_id(d))
#define LID(d) ((int)get_local_id(d))
#define GRP(d) ((int)get_group_id(d))
#define LSZ(d) ((int)get_local_size(d))
#define NGRP(d) ((int)get_num_groups(d))
#define EXPF(x) exp(x)
#define LOGF(x) log(x)
#define SQRTF(x) sqrt(x)
#define TANHF(x) tanh(x)
#define COSF(x) cos(x)
#define SINF(x) sin(x)
#define RINTF(x) rint(x)
#define FABSF(x) fabs(x)
#define FMAXF(a, b) fmax(a, b)
#define FMINF(a, b) fmin(a, b)
#define AS_FLOAT(u) as_float(u)
#define AS_UINT(f) as_uint(f)
#pragma OPENCL FP_CONTRACT OFF
#define FMUL_RN(a, b) ((a) * (b))
#define FADD_RN(a, b) ((a) + (b))
typedef char i8;
typedef ulong u64;
#else
/* ---------------------------------------------------------------- CUDA C++ (NVRTC / hipRTC) */
#define KERNEL extern "C" __global__
#define GLOBAL
#define SHARED __shared__
#define LPTR
#define DEVICE __device__ __forceinline__
#define BARRIER __syncthreads()
#define GGUFPY_DIM3(v, d) ((d) == 0 ? (v).x : (d) == 1 ? (v).y : (v).z)
#define GID(d) ((int)(GGUFPY_DIM3(blockIdx, d) * GGUFPY_DIM3(blockDim, d) + GGUFPY_DIM3(threadIdx, d)))
#define LID(d) ((int)GGUFPY_DIM3(threadIdx, d))
#define GRP(d) ((int)GGUFPY_DIM3(blockIdx, d))
#define LSZ(d) ((int)GGUFPY_DIM3(blockDim, d))
#define NGRP(d) ((int)GGUFPY_DIM3(gridDim, d))
#define EXPF(x) expf(x)
#define LOGF(x) logf(x)
#define SQRTF(x) sqrtf(x)
#define TANHF(x) tanhf(x)
#define COSF(x) cosf(x)
#define SINF(x) sinf(x)
#define RINTF(x) rintf(x)
#define FABSF(x) fabsf(x)
#define FMAXF(a, b) fmaxf(a, b)
#define FMINF(a, b) fminf(a, b)
#define AS_FLOAT(u) __uint_as_float(u)
#define AS_UINT(f) __float_as_uint(f)
#define FMUL_RN(a, b) __fmul_rn((a), (b))
#define FADD_RN(a, b) __fadd_rn((a), (b))
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long long u64;
typedef signed char i8;
#endif

/* ---------------------------------------------------------------- shared helpers */

/* IEEE half (storage: ushort) to float, exact, for every value including subnormals, inf, NaN. */
DEVICE float f16_to_f32(ushort h) {
    uint sign = ((uint)h & 0x8000u) << 16;
    uint exp = ((uint)h >> 10) & 0x1fu;
    uint man = (uint)h & 0x3ffu;
    if (exp == 0x1fu) return AS_FLOAT(sign | 0x7f800000u | (man << 13));  /* inf, NaN */
    if (exp == 0u) {                                    /* zero or subnormal: man * 2^-24 */
        float f = (float)man * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    return AS_FLOAT(sign | ((exp + 112u) << 23) | (man << 13));
}

/* float to IEEE half with round-to-nearest-even (what numpy's astype(float16) and F16C do). */
DEVICE ushort f32_to_f16(float f) {
    uint x = AS_UINT(f);
    uint sign = (x >> 16) & 0x8000u;
    uint ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (ushort)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (ushort)(sign | 0x7c00u);         /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                          /* below 2^-14: subnormal half */
        if (ax < 0x33000000u) return (ushort)sign;                   /* below 2^-25: rounds to 0 */
        uint e = ax >> 23;
        uint m = (ax & 0x7fffffu) | 0x800000u;
        uint shift = 126u - e;                                       /* 14 + (113 - e) - 1 */
        uint r = m >> shift;
        uint rem = m & ((1u << shift) - 1u);
        uint half_ = 1u << (shift - 1u);
        if (rem > half_ || (rem == half_ && (r & 1u))) r += 1u;
        return (ushort)(sign | r);
    }
    uint r = ax + 0xc8000fffu + ((ax >> 13) & 1u);                  /* rebias (-112 << 23) and round */
    return (ushort)(sign | (r >> 13));
}

DEVICE float round_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

/* bfloat16 <-> float: round-to-nearest-even, NaN kept quiet (ggml_compute_fp32_to_bf16). */
DEVICE float bf16_to_f32(ushort h) { return AS_FLOAT(((uint)h) << 16); }
DEVICE ushort f32_to_bf16(float f) {
    uint u = AS_UINT(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 64u);
    return (ushort)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}
DEVICE float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

/* little-endian loads from byte storage (GGML blocks are byte-packed, fields unaligned) */
DEVICE ushort ld_u16(GLOBAL const uchar* p) { return (ushort)(p[0] | (p[1] << 8)); }
DEVICE uint ld_u32(GLOBAL const uchar* p) {
    return (uint)p[0] | ((uint)p[1] << 8) | ((uint)p[2] << 16) | ((uint)p[3] << 24);
}
DEVICE float ld_f16(GLOBAL const uchar* p) { return f16_to_f32(ld_u16(p)); }

/* four signed bytes packed in an int times four more, accumulated: CUDA's __dp4a where it exists */
/* (HIP builds take the portable form: their __dp4a spelling varies by ROCm release) */
#if !defined(__OPENCL_VERSION__) && !defined(__HIPCC_RTC__) && !defined(__HIP_PLATFORM_AMD__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
#define DP4A(a, b, c) __dp4a((int)(a), (int)(b), (int)(c))
#else
DEVICE int dp4a_portable(int a, int b, int c) {
    return c + (int)(i8)(a & 0xff) * (int)(i8)(b & 0xff) + (int)(i8)((a >> 8) & 0xff) * (int)(i8)((b >> 8) & 0xff)
             + (int)(i8)((a >> 16) & 0xff) * (int)(i8)((b >> 16) & 0xff) + (int)(i8)((a >> 24) & 0xff) * (int)(i8)((b >> 24) & 0xff);
}
#define DP4A(a, b, c) dp4a_portable((int)(a), (int)(b), (int)(c))
#endif

/* pack four int codes (-128..127) into one int, lowest byte first */
DEVICE int pack4(int a, int b, int c, int d) {
    return (a & 0xff) | ((b & 0xff) << 8) | ((c & 0xff) << 16) | ((int)((uint)(d & 0xff) << 24));
}

#endif /* GGUFPY_PRELUDE_H */
