# Sources of the reduce / quantize / LUT kernels (owned by csrc/kernels).
set(RINGFLOW_KERNEL_SOURCES
  csrc/kernels/reduce_scalar.cc
  csrc/kernels/reduce.cc
  csrc/kernels/convert.cc
  csrc/kernels/reduce_avx2.cc
  csrc/kernels/reduce_avx512.cc
  csrc/kernels/quantize_fixed.cc
  csrc/kernels/quantize_fixed_avx2.cc
  csrc/kernels/quantize_lowbit.cc
  csrc/kernels/quantize_lowbit_avx2.cc
  csrc/kernels/lut_scalar.cc
  csrc/kernels/lut.cc
  csrc/kernels/lut_avx2.cc
)

# Only these files get wide-vector flags; reduce.cc picks one at run time
# with __builtin_cpu_supports, so the library still runs on baseline x86-64.
# -ffp-contract=off keeps a*b+c from fusing, so the SIMD paths round exactly
# as the scalar reference does.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set_source_files_properties(csrc/kernels/reduce_avx2.cc PROPERTIES
    COMPILE_OPTIONS "-O3;-mavx2;-mfma;-mf16c;-ffp-contract=off")
  set_source_files_properties(csrc/kernels/quantize_fixed_avx2.cc PROPERTIES
    COMPILE_OPTIONS "-O3;-mavx2;-mfma;-ffp-contract=off")
  set_source_files_properties(csrc/kernels/quantize_lowbit_avx2.cc PROPERTIES
    COMPILE_OPTIONS "-O3;-mavx2;-mfma;-ffp-contract=off")
  set_source_files_properties(csrc/kernels/lut_avx2.cc PROPERTIES
    COMPILE_OPTIONS "-O3;-mavx2;-mfma")
  set_source_files_properties(csrc/kernels/reduce_avx512.cc PROPERTIES
    COMPILE_OPTIONS "-O3;-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mf16c;-mprefer-vector-width=512;-ffp-contract=off")
endif()

# Quantisation must round exactly as its numpy reference: no fused multiply-add.
# -fno-trapping-math lets GCC turn the clamp and NaN selects into blends (it
# keeps results; it only stops caring which FP exception flags get raised),
# without which the fixed-point loops stay scalar and branchy.
set_source_files_properties(csrc/kernels/quantize_fixed.cc csrc/kernels/quantize_lowbit.cc
  PROPERTIES COMPILE_OPTIONS "-O3;-ffp-contract=off;-fno-trapping-math")

# GPU kernels only where nvcc is present; otherwise stubs that raise a clear error.
if(RINGFLOW_HAVE_CUDA)
  list(APPEND RINGFLOW_KERNEL_SOURCES csrc/kernels/reduce_cuda.cu csrc/kernels/lut_cuda.cu
       csrc/kernels/lut_wsum_cuda.cu)
else()
  list(APPEND RINGFLOW_KERNEL_SOURCES csrc/kernels/cuda_stub.cc)
endif()
