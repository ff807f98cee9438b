// The reduce loops compiled for AVX-512 F/BW/VL/DQ (flags set in sources.cmake).
#define RF_ISA avx512
#include "reduce_loops.h"
