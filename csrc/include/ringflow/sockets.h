// The blocking socket helpers the TCP mesh is built with (transport/
// socket_util.cc), public so that MALT's cross-host streams connect, listen
// and say hello with the same code instead of a second socket layer.
#pragma once

#include <cstddef>
#include <string>

#include "ringflow/op.h"

namespace ringflow::tcp {
// "host:port" or "[v6]:port" -> connected, blocking socket, retried until
// `deadline`.  Throws TimeoutError naming `what`.
int connectWithRetry(const std::string& addr, Deadline deadline, const std::string& what);
// Reads/writes exactly n bytes on a blocking socket before `deadline`.
void readFull(int fd, void* buf, size_t n, Deadline deadline);
void writeFull(int fd, const void* buf, size_t n, Deadline deadline);
int listenOn(const std::string& host, int* port);
void setNonBlocking(int fd);
void setNoDelay(int fd);
}  // namespace ringflow::tcp
