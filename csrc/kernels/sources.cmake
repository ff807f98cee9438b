# Sources of the reduce / quantize / LUT kernels (owned by csrc/kernels).
set(RINGFLOW_KERNEL_SOURCES
  csrc/kernels/reduce_scalar.cc
  csrc/kernels/reduce.cc
)
