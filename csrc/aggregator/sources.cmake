# The packet-aggregation service and its worker-side client (mechanism 3).
set(RINGFLOW_AGGREGATOR_SOURCES
  csrc/aggregator/packet_auth.cc
  csrc/aggregator/checksum.cc
  csrc/aggregator/siphash.cc
  csrc/aggregator/udp.cc
  csrc/aggregator/udp_batch.cc
  csrc/aggregator/udp_floor.cc
  csrc/aggregator/faults.cc
  csrc/aggregator/job_table.cc
  csrc/aggregator/service.cc
  csrc/aggregator/client.cc
)
