// Pieces of the shared-memory transport shared by its setup and data-path files.
#pragma once

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "frame.h"
#include "mailbox.h"
#include "ringflow/shm.h"
#include "shm_layout.h"

namespace ringflow {

// Both directions between this rank and one local peer.
struct ShmTransport::PeerQueues {
  int peer = -1;  // global rank
  shm::Header* peerHeader = nullptr;
  // Outgoing: the queue for this rank inside the peer's segment.
  shm::QueueCtl* out = nullptr;
  char* outData = nullptr;
  std::mutex sendMu;
  uint64_t outHead = 0;  // guarded by sendMu
  std::deque<std::shared_ptr<SendItem>> pending;  // guarded by sendMu
  bool dead = false;  // guarded by sendMu
  // Incoming: the peer's queue inside this rank's segment; reader thread only.
  shm::QueueCtl* in = nullptr;
  char* inData = nullptr;
  uint64_t inTail = 0;
  FrameHeader header;
  size_t headerGot = 0;
  std::unique_ptr<Mailbox::Sink> sink;
  size_t payloadGot = 0;
};

}  // namespace ringflow
