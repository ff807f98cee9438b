// The aggregator folder's exported interface for the layers above it: the
// worker-side client (algo/aggregate.cc) and its fault injector (bindings).
// csrc/aggregator keeps these headers beside its sources for now; this is
// the one sanctioned way in, so nothing else includes a private aggregator
// header (tests/test_layering.py checks it).
#pragma once

#include "../../aggregator/client.h"
#include "../../aggregator/faults.h"
