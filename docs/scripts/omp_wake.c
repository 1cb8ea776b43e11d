/* What an OpenMP parallel region costs after the main thread has been busy
   for a while, in a process that also holds other runtimes' thread pools.

     gcc -O2 -fopenmp -shared -fPIC docs/scripts/omp_wake.c -o /tmp/omp_wake.so
     python - <<'PY'
     import ctypes, torch
     torch.set_num_threads(2)
     # optionally build and run an ONNX Runtime session here first
     ctypes.CDLL("/tmp/omp_wake.so").run_test()
     PY

   Loaded after torch, it runs on torch's libgomp (one OpenMP pool). */
#include <stdio.h>
#include <time.h>
#include <omp.h>
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec*1e6+t.tv_nsec*1e-3;}
static volatile double sink;
static void busy(double us){double t=now(); while(now()-t<us);}
void run_test(void){
  double gaps[]={0,5,20,50,200,1000,5000};
  for(int g=0; g<7; g++){
    double tot=0; int n=200;
    for(int i=0;i<n;i++){
      #pragma omp parallel num_threads(2)
      { sink += omp_get_thread_num(); }
      busy(gaps[g]);
      double t=now();
      #pragma omp parallel num_threads(2)
      { sink += omp_get_thread_num(); }
      tot += now()-t;
    }
    printf("gap %6.0f us: empty parallel region %.2f us\n", gaps[g], tot/n);
  }
}
