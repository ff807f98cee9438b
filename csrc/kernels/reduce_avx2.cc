// The reduce loops compiled for AVX2 + F16C (flags set in sources.cmake).
#define RF_ISA avx2
#include "reduce_loops.h"
