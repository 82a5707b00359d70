/* The reductions' per-value arithmetic with some of its adds done by FMA (fma(v, 1.0, a)
 * and fma(x, 1.0, -p) round exactly as a + v and x - p: the same bits), against the
 * plain form fastbn builds (-ffp-contract=off): does moving adds to the FMA pipes
 * raise the arithmetic ceiling of bench/stats_ceiling.c? Data in L1 (4096 values),
 * one core, 512-bit vectors, four independent chains as the kernels' lanes. Prints
 * Gvalues/s for float32 and float16 data (widened to double as fastbn does):
 *   statistics (e = x - p; a += e; b += e * e) and the backward's sums
 *   (a += g; b += g * (x - s)), with the sub (sub-fma), the first sum (a-fma), the
 *   second sum's add (b fma) or all of them by FMA.
 * Results: bench/results/2026-12-07_sums_fma.txt, docs/performance.md.
 *   cc -O2 -march=native -ffp-contract=off bench/sums_fma.c -o /tmp/sums_fma && /tmp/sums_fma
 * x86-64 with AVX-512F, F16C and FMA. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#define N 4096
static float xf[N] __attribute__((aligned(64))), df[N] __attribute__((aligned(64)));
static uint16_t xh[N] __attribute__((aligned(64))), dh[N] __attribute__((aligned(64)));
static volatile double sink;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
typedef __m512d vd;
static inline vd W(int k,int which,int i){ if(k==0) return _mm512_cvtps_pd(_mm256_load_ps((which?df:xf)+i));
  return _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_load_si128((const __m128i*)((which?dh:xh)+i)))); }
static inline vd SUB(int f, vd x, vd p){ if (f) return _mm512_fmadd_pd(x,_mm512_set1_pd(1.0),-p); return x - p; }
static inline vd ADD(int f, vd a, vd e){ if (f) return _mm512_fmadd_pd(e,_mm512_set1_pd(1.0),a); return a + e; }
static inline double vs(vd a){double s=0;for(int i=0;i<8;i++)s+=a[i];return s;}
/* fs: sub by fma; fa: a += e by fma; fb: b += e*e's add by fma */
static inline double stats(const int k,const int fs,const int fa,const int fb,int reps){
  vd a[4]={0},b[4]={0}; const vd p=_mm512_set1_pd(0.3);
  for(int r=0;r<reps;r++) for(int i=0;i<N;i+=32){
    for(int j=0;j<4;j++){ vd e=SUB(fs,W(k,0,i+8*j),p); a[j]=ADD(fa,a[j],e); b[j]=ADD(fb,b[j],e*e);} }
  return vs(a[0]+a[1]+a[2]+a[3])+vs(b[0]+b[1]+b[2]+b[3]); }
static inline double sums(const int k,const int fs,const int fa,const int fb,int reps){
  vd a[4]={0},b[4]={0}; const vd s=_mm512_set1_pd(0.3);
  for(int r=0;r<reps;r++) for(int i=0;i<N;i+=32){
    for(int j=0;j<4;j++){ vd g=W(k,1,i+8*j); a[j]=ADD(fa,a[j],g); b[j]=ADD(fb,b[j],g*SUB(fs,W(k,0,i+8*j),s));} }
  return vs(a[0]+a[1]+a[2]+a[3])+vs(b[0]+b[1]+b[2]+b[3]); }
#define T(expr,name) { double best=1e30; for(int t=0;t<7;t++){double t0=now(); sink+=expr; double d=now()-t0; if(d<best)best=d;} printf("%-28s %6.2f Gv/s\n",name,(double)N*reps/best*1e-9); }
int main(){ for(int i=0;i<N;i++){xf[i]=(i%97)*0.01f;df[i]=(i%89)*0.01f;xh[i]=0x3c00+i%100;dh[i]=0x3800+i%90;}
  int reps=20000;
  for(int k=0;k<2;k++){ printf("%s\n",k?"float16":"float32");
  T(stats(k,0,0,0,reps),"stats plain"); T(stats(k,1,0,0,reps),"stats sub-fma");
  T(stats(k,0,1,0,reps),"stats a-fma"); T(stats(k,1,1,0,reps),"stats sub,a fma");
  T(stats(k,1,0,1,reps),"stats sub,b fma"); T(stats(k,0,1,1,reps),"stats a,b fma"); T(stats(k,1,1,1,reps),"stats all fma");
  T(sums(k,0,0,0,reps),"sums plain"); T(sums(k,1,0,0,reps),"sums sub-fma"); T(sums(k,0,1,0,reps),"sums a-fma");
  T(sums(k,1,1,0,reps),"sums sub,a fma"); T(sums(k,0,1,1,reps),"sums a,b fma"); T(sums(k,1,1,1,reps),"sums all fma"); }
}
