/* reduce.h: work-group reductions through local memory, for work-groups of RED_WG threads
 * (a power of two). Every thread of the group must call them (they contain barriers); every
 * thread gets the result. `buf` holds RED_WG floats of SHARED memory. */
#ifndef GGUFPY_REDUCE_H
#define GGUFPY_REDUCE_H

#ifndef RED_WG
#define RED_WG 64
#endif

DEVICE float wg_sum(float v, LPTR float* buf) {
    int l = LID(0);
    buf[l] = v;
    BARRIER;
    for (int s = RED_WG / 2; s > 0; s >>= 1) {
        if (l < s) buf[l] += buf[l + s];
        BARRIER;
    }
    float r = buf[0];
    BARRIER;
    return r;
}

DEVICE float wg_max(float v, LPTR float* buf) {
    int l = LID(0);
    buf[l] = v;
    BARRIER;
    for (int s = RED_WG / 2; s > 0; s >>= 1) {
        if (l < s) buf[l] = FMAXF(buf[l], buf[l + s]);
        BARRIER;
    }
    float r = buf[0];
    BARRIER;
    return r;
}

#endif
