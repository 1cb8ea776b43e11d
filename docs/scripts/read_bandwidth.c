/* Read bandwidth by working-set size, 1 and 2 threads: where L2, L3 and
   memory begin on this machine (docs/benchmarks.md, session 10).
     gcc -O2 -mavx512f -fopenmp docs/scripts/read_bandwidth.c -o /tmp/bw && /tmp/bw */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  for (long mb=1; mb<=512; mb*=2){
    long n = mb<<18; float* a = aligned_alloc(64, n*4); for(long i=0;i<n;i++) a[i]=1;
    for (int th=1; th<=2; th++){
      double best=1e9; int reps = mb<64? 2000/mb+3 : 5;
      for(int r=0;r<reps;r++){
        double s=now(); float tot=0;
        #pragma omp parallel for num_threads(th) reduction(+:tot)
        for(long c=0;c<n;c+=1<<14){ __m512 s0=_mm512_setzero_ps(),s1=s0,s2=s0,s3=s0;
          for(long i=c;i<c+(1<<14);i+=64){ s0=_mm512_add_ps(s0,_mm512_load_ps(a+i)); s1=_mm512_add_ps(s1,_mm512_load_ps(a+i+16)); s2=_mm512_add_ps(s2,_mm512_load_ps(a+i+32)); s3=_mm512_add_ps(s3,_mm512_load_ps(a+i+48));}
          tot+=_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0,s1),_mm512_add_ps(s2,s3)));}
        double e=now()-s; if(e<best)best=e; if(tot<0)printf("x");
      }
      printf("%4ld MB %d thr: %6.1f GB/s\n", mb, th, n*4/best/1e9);
    }
    free(a);
  }
}
