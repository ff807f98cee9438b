# Sources of MALT's queues and merge (owned by csrc/malt).
set(RINGFLOW_MALT_SOURCES
  csrc/malt/inbox.cc
  csrc/malt/outbox.cc
  csrc/malt/stream_in.cc
  csrc/malt/stream_out.cc
  csrc/malt/weighted_sum.cc
)
# The merge loop is plain C++: -O3 lets it vectorise (RINGFLOW_SIMD_VARIANTS adds AVX2).
set_source_files_properties(csrc/malt/weighted_sum.cc PROPERTIES COMPILE_OPTIONS "-O3")
