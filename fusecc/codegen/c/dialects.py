"""The C dialects: one vector vocabulary, several instruction sets.

Every generated kernel is written against a small set of macros (``vf`` a
vector of ``VL`` floats, ``vload``, ``vfma``, ``vselect``, ...). A dialect
defines them for one ISA; the renderers never mention an intrinsic. The
compiler flags that enable the ISA belong to the `Target`, not here.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dialect:
    name: str
    vl: int  # floats per vector
    macros: str  # C definitions of the vector vocabulary

    @property
    def vector_registers(self) -> int:
        return {"avx512": 32, "avx2": 16, "neon": 32, "scalar": 16}[self.name]


_COMMON_SCALAR_BF16 = r"""
static inline float fc_bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t fc_f32_to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16);               /* round to nearest even */
}
"""

AVX512 = Dialect(
    "avx512",
    16,
    r"""
#include <immintrin.h>
#define VL 16
typedef __m512 vf;
typedef __mmask16 vm;
#define vload(p) _mm512_loadu_ps(p)
#define vstore(p, v) _mm512_storeu_ps((p), (v))
#define fc_mask(n) ((__mmask16)((n) >= 16 ? 0xffffu : ((1u << (n)) - 1u)))
#define vloadn(p, n) _mm512_maskz_loadu_ps(fc_mask(n), (p))
#define vstoren(p, v, n) _mm512_mask_storeu_ps((p), fc_mask(n), (v))
#define vset1(x) _mm512_set1_ps(x)
#define vzero() _mm512_setzero_ps()
#define vadd(a, b) _mm512_add_ps(a, b)
#define vsub(a, b) _mm512_sub_ps(a, b)
#define vmul(a, b) _mm512_mul_ps(a, b)
#define vdiv(a, b) _mm512_div_ps(a, b)
#define vmax(a, b) _mm512_max_ps(a, b)
#define vmin(a, b) _mm512_min_ps(a, b)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vsqrt(a) _mm512_sqrt_ps(a)
#define vabs(a) _mm512_abs_ps(a)
#define vneg(a) _mm512_sub_ps(_mm512_setzero_ps(), a)
#define vlt(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)
#define vle(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ)
#define vgt(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)
#define vge(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ)
#define veq(a, b) _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)
#define vne(a, b) _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ)
#define vselect(m, a, b) _mm512_mask_blend_ps((m), (b), (a))
#define vround(a) _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vpow2i(n) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23))
#define vreduce_add(v) _mm512_reduce_add_ps(v)
#define vreduce_max(v) _mm512_reduce_max_ps(v)
#define vreduce_min(v) _mm512_reduce_min_ps(v)
/* half vectors (8 floats, gemm.microkernel's half_last) */
typedef __m256 vhf;
#define vhload(p) _mm256_loadu_ps(p)
#define vhzero() _mm256_setzero_ps()
#define vhfma(a, b, c) _mm256_fmadd_ps(_mm512_castps512_ps256(a), b, c)
#define vhwiden(h) _mm512_zextps256_ps512(h)
static inline vf vload_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline vf vloadn_bf16(const uint16_t* p, int n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(fc_mask(n), p)), 16));
}
static inline __m256i fc_round_bf16(vf v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
static inline void vstore_bf16(uint16_t* p, vf v) { _mm256_storeu_si256((__m256i*)p, fc_round_bf16(v)); }
static inline void vstoren_bf16(uint16_t* p, vf v, int n) { _mm256_mask_storeu_epi16(p, fc_mask(n), fc_round_bf16(v)); }
""",
)

AVX2 = Dialect(
    "avx2",
    8,
    r"""
#include <immintrin.h>
#define VL 8
typedef __m256 vf;
typedef __m256 vm;
static const int32_t fc_mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#define fc_mask(n) _mm256_loadu_si256((const __m256i*)(fc_mask_table + 8 - ((n) >= 8 ? 8 : (n))))
#define vload(p) _mm256_loadu_ps(p)
#define vstore(p, v) _mm256_storeu_ps((p), (v))
#define vloadn(p, n) _mm256_maskload_ps((p), fc_mask(n))
#define vstoren(p, v, n) _mm256_maskstore_ps((p), fc_mask(n), (v))
#define vset1(x) _mm256_set1_ps(x)
#define vzero() _mm256_setzero_ps()
#define vadd(a, b) _mm256_add_ps(a, b)
#define vsub(a, b) _mm256_sub_ps(a, b)
#define vmul(a, b) _mm256_mul_ps(a, b)
#define vdiv(a, b) _mm256_div_ps(a, b)
#define vmax(a, b) _mm256_max_ps(a, b)
#define vmin(a, b) _mm256_min_ps(a, b)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vsqrt(a) _mm256_sqrt_ps(a)
#define vabs(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a)
#define vneg(a) _mm256_xor_ps(a, _mm256_set1_ps(-0.0f))
#define vlt(a, b) _mm256_cmp_ps(a, b, _CMP_LT_OQ)
#define vle(a, b) _mm256_cmp_ps(a, b, _CMP_LE_OQ)
#define vgt(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
#define vge(a, b) _mm256_cmp_ps(a, b, _CMP_GE_OQ)
#define veq(a, b) _mm256_cmp_ps(a, b, _CMP_EQ_OQ)
#define vne(a, b) _mm256_cmp_ps(a, b, _CMP_NEQ_UQ)
#define vselect(m, a, b) _mm256_blendv_ps((b), (a), (m))
#define vround(a) _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vpow2i(n) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23))
static inline float vreduce_add(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s)); s = _mm_add_ss(s, _mm_movehdup_ps(s)); return _mm_cvtss_f32(s);
}
static inline float vreduce_max(vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s)); s = _mm_max_ss(s, _mm_movehdup_ps(s)); return _mm_cvtss_f32(s);
}
static inline float vreduce_min(vf v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s)); s = _mm_min_ss(s, _mm_movehdup_ps(s)); return _mm_cvtss_f32(s);
}
static inline vf vload_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline vf vloadn_bf16(const uint16_t* p, int n) {
  float t[8] = {0}; for (int i = 0; i < n; ++i) t[i] = fc_bf16_to_f32(p[i]); return _mm256_loadu_ps(t);
}
static inline void vstoren_bf16(uint16_t* p, vf v, int n) {
  float t[8]; _mm256_storeu_ps(t, v); for (int i = 0; i < n; ++i) p[i] = fc_f32_to_bf16(t[i]);
}
static inline void vstore_bf16(uint16_t* p, vf v) { vstoren_bf16(p, v, 8); }
""",
)

NEON = Dialect(
    "neon",
    4,
    r"""
#include <arm_neon.h>
#define VL 4
typedef float32x4_t vf;
typedef uint32x4_t vm;
#define vload(p) vld1q_f32(p)
#define vstore(p, v) vst1q_f32((p), (v))
static inline vf vloadn(const float* p, int n) { float t[4] = {0, 0, 0, 0}; for (int i = 0; i < n; ++i) t[i] = p[i]; return vld1q_f32(t); }
static inline void vstoren(float* p, vf v, int n) { float t[4]; vst1q_f32(t, v); for (int i = 0; i < n; ++i) p[i] = t[i]; }
#define vset1(x) vdupq_n_f32(x)
#define vzero() vdupq_n_f32(0.0f)
#define vadd(a, b) vaddq_f32(a, b)
#define vsub(a, b) vsubq_f32(a, b)
#define vmul(a, b) vmulq_f32(a, b)
#define vdiv(a, b) vdivq_f32(a, b)
#define vmax(a, b) vmaxq_f32(a, b)
#define vmin(a, b) vminq_f32(a, b)
#define vfma(a, b, c) vfmaq_f32((c), (a), (b))
#define vsqrt(a) vsqrtq_f32(a)
#define vabs(a) vabsq_f32(a)
#define vneg(a) vnegq_f32(a)
#define vlt(a, b) vcltq_f32(a, b)
#define vle(a, b) vcleq_f32(a, b)
#define vgt(a, b) vcgtq_f32(a, b)
#define vge(a, b) vcgeq_f32(a, b)
#define veq(a, b) vceqq_f32(a, b)
#define vne(a, b) vmvnq_u32(vceqq_f32(a, b))
#define vselect(m, a, b) vbslq_f32((m), (a), (b))
#define vround(a) vrndnq_f32(a)
#define vpow2i(n) vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23))
#define vreduce_add(v) vaddvq_f32(v)
#define vreduce_max(v) vmaxvq_f32(v)
#define vreduce_min(v) vminvq_f32(v)
static inline vf vload_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
static inline vf vloadn_bf16(const uint16_t* p, int n) { uint16_t t[4] = {0, 0, 0, 0}; for (int i = 0; i < n; ++i) t[i] = p[i]; return vload_bf16(t); }
static inline void vstoren_bf16(uint16_t* p, vf v, int n) { float t[4]; vst1q_f32(t, v); for (int i = 0; i < n; ++i) p[i] = fc_f32_to_bf16(t[i]); }
static inline void vstore_bf16(uint16_t* p, vf v) { vstoren_bf16(p, v, 4); }
""",
)

SCALAR = Dialect(
    "scalar",
    1,
    r"""
#define VL 1
typedef float vf;
typedef int vm;
#define vload(p) (*(p))
#define vstore(p, v) (*(p) = (v))
#define vloadn(p, n) (*(p))
#define vstoren(p, v, n) (*(p) = (v))
#define vset1(x) ((float)(x))
#define vzero() 0.0f
#define vadd(a, b) ((a) + (b))
#define vsub(a, b) ((a) - (b))
#define vmul(a, b) ((a) * (b))
#define vdiv(a, b) ((a) / (b))
#define vmax(a, b) fc_maxf(a, b)
#define vmin(a, b) fc_minf(a, b)
#define vfma(a, b, c) ((a) * (b) + (c))
#define vsqrt(a) sqrtf(a)
#define vabs(a) fabsf(a)
#define vneg(a) (-(a))
#define vlt(a, b) ((a) < (b))
#define vle(a, b) ((a) <= (b))
#define vgt(a, b) ((a) > (b))
#define vge(a, b) ((a) >= (b))
#define veq(a, b) ((a) == (b))
#define vne(a, b) ((a) != (b))
#define vselect(m, a, b) ((m) ? (a) : (b))
#define vround(a) nearbyintf(a)
static inline float vpow2i(float n) { int32_t i = ((int32_t)n + 127) << 23; float f; memcpy(&f, &i, 4); return f; }
#define vreduce_add(v) (v)
#define vreduce_max(v) (v)
#define vreduce_min(v) (v)
#define vload_bf16(p) fc_bf16_to_f32(*(p))
#define vloadn_bf16(p, n) fc_bf16_to_f32(*(p))
#define vstore_bf16(p, v) (*(p) = fc_f32_to_bf16(v))
#define vstoren_bf16(p, v, n) (*(p) = fc_f32_to_bf16(v))
""",
)

DIALECTS = {d.name: d for d in (AVX512, AVX2, NEON, SCALAR)}
COMMON_SCALAR = _COMMON_SCALAR_BF16
