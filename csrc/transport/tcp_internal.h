// Pieces of the TCP transport shared by its setup and data-path files.
#pragma once

#include <sys/uio.h>

#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "frame.h"
#include "mailbox.h"
#include "ringflow/sockets.h"
#include "ringflow/tcp.h"

namespace ringflow {

struct TcpTransport::Conn {
  int fd = -1;
  int peer = -1;
  std::mutex sendMu;
  std::deque<std::shared_ptr<SendItem>> queue;
  bool wantWrite = false;
  bool dead = false;  // guarded by sendMu
  // Read state, touched only by the progress thread.
  FrameHeader header;
  size_t headerGot = 0;
  std::unique_ptr<Mailbox::Sink> sink;
  size_t payloadGot = 0;
  bool readDone = false;
};

}  // namespace ringflow
