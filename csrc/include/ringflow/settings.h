// Every RINGFLOW_* setting the core reads, read at once: a malformed value
// then fails when the communicator is built, on every rank that has it, not
// at the first call that happens to need it (on that rank alone, leaving
// its peers waiting for the timeout).
#pragma once

namespace ringflow {

// Throws InvalidArgument naming the first bad setting (env.h).
void checkSettings();

}  // namespace ringflow
