// The shared-memory data path.  A queue is a byte stream carrying the same
// frames as a TCP connection (header, then payload), so a frame larger than
// the queue simply streams through it in pieces.  The caller writes straight
// into the queue when nothing is queued before it; the reader thread moves
// what did not fit and drains every incoming queue into the Mailbox, which
// checks each frame's call descriptor exactly as for TCP.  Waiting is spin
// first (a frame usually follows within microseconds), then a futex sleep.
#include <sched.h>

#include <cstring>

#include "shm_internal.h"
#include "trace.h"

namespace ringflow {
namespace {

// Copies `n` bytes into the ring at stream position `pos` (wrapping).
void ringPut(char* ring, size_t cap, uint64_t pos, const char* src, size_t n) {
  size_t off = size_t(pos % cap), first = std::min(n, cap - off);
  std::memcpy(ring + off, src, first);
  if (n > first) std::memcpy(ring, src + first, n - first);
}

void ringGet(const char* ring, size_t cap, uint64_t pos, char* dst, size_t n) {
  size_t off = size_t(pos % cap), first = std::min(n, cap - off);
  std::memcpy(dst, ring + off, first);
  if (n > first) std::memcpy(dst + first, ring, n - first);
}

}  // namespace

RequestPtr ShmTransport::send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                              size_t bytes) {
  auto item = std::make_shared<SendItem>();
  item->header = FrameHeader::data(key, desc, bytes);
  item->data = static_cast<const char*>(data);
  item->bytes = bytes;
  item->req = std::make_shared<Request>(peer, true);
  if (key.channel == Channel::Collective) {
    std::string why = mailbox_->abortReason(key.comm);
    if (!why.empty()) {
      item->req->fail(std::make_exception_ptr(PeerError(why)));
      return item->req;
    }
  }
  PeerQueues& l = *peers_[localOf_[peer]];
  {
    std::lock_guard<std::mutex> lock(l.sendMu);
    if (l.dead) {
      std::string why = mailbox_->peerGoneReason(peer);
      item->req->fail(std::make_exception_ptr(
          PeerError(why.empty() ? "no shared-memory link to rank " + std::to_string(peer) : why)));
      return item->req;
    }
    if (!l.pending.empty() || !writeSome(l, *item)) {
      // The reader thread moves the rest as the peer drains the queue.
      l.pending.push_back(item);
      shm::ring(headers_[localOf_[rank_]]->rxBell);
      return item->req;
    }
  }
  item->req->complete();
  return item->req;
}

bool ShmTransport::writeSome(PeerQueues& l, SendItem& item) {
  const size_t cap = options_.queueBytes, hsize = sizeof(FrameHeader);
  const char* payload = item.owned.empty() ? item.data : item.owned.data();
  size_t space = cap - size_t(l.outHead - l.out->tail.load(std::memory_order_acquire));
  size_t before = item.sent;
  while (space > 0 && item.sent < hsize + item.bytes) {
    size_t n;
    if (item.sent < hsize) {
      n = std::min(space, hsize - item.sent);
      ringPut(l.outData, cap, l.outHead, reinterpret_cast<const char*>(&item.header) + item.sent,
              n);
    } else {
      size_t off = item.sent - hsize;
      n = std::min(space, item.bytes - off);
      ringPut(l.outData, cap, l.outHead, payload + off, n);
    }
    l.outHead += n;
    item.sent += n;
    space -= n;
  }
  if (item.sent != before) {
    l.out->head.store(l.outHead, std::memory_order_release);
    shm::ring(l.peerHeader->rxBell);
  }
  return item.sent == hsize + item.bytes;
}

bool ShmTransport::flushOut(PeerQueues& l) {
  std::vector<RequestPtr> done;
  bool moved = false;
  {
    std::lock_guard<std::mutex> lock(l.sendMu);
    while (!l.pending.empty() && !l.dead) {
      SendItem& item = *l.pending.front();
      size_t before = item.sent;
      bool finished = writeSome(l, item);
      moved |= item.sent != before;
      if (!finished) {
        // Ask the consumer to ring us when it frees space, then look again
        // in case it did so before seeing the request.
        l.out->wantSpace.store(1, std::memory_order_seq_cst);
        if (l.out->tail.load(std::memory_order_seq_cst) + options_.queueBytes > l.outHead)
          continue;
        break;
      }
      done.push_back(item.req);
      l.pending.pop_front();
    }
  }
  for (auto& r : done) r->complete();
  return moved || !done.empty();
}

bool ShmTransport::drainIn(PeerQueues& l) {
  const size_t cap = options_.queueBytes, hsize = sizeof(FrameHeader);
  uint64_t head = l.in->head.load(std::memory_order_acquire);
  if (head == l.inTail) return false;
  while (l.inTail < head) {
    size_t avail = size_t(head - l.inTail);
    if (l.headerGot < hsize) {
      size_t n = std::min(avail, hsize - l.headerGot);
      ringGet(l.inData, cap, l.inTail, reinterpret_cast<char*>(&l.header) + l.headerGot, n);
      l.inTail += n;
      l.headerGot += n;
      if (l.headerGot < hsize) break;
      if (l.header.magic != kFrameMagic || l.header.type != FrameType::Data) {
        mailbox_->peerGone(l.peer, "rank " + std::to_string(l.peer) +
                                       " wrote a malformed frame into shared memory");
        l.inTail = head;
        break;
      }
      l.sink = mailbox_->onHeader(l.peer, l.header);
      l.payloadGot = 0;
      if (l.header.bytes == 0) finishFrame(l);
      continue;
    }
    size_t n = std::min<size_t>(avail, l.header.bytes - l.payloadGot);
    {
      // Held while writing into a caller's buffer, so a cancelled receive
      // can wait for this write to end (as the TCP reader does).
      std::unique_lock<std::mutex> lock(mailbox_->payloadMutex(l.peer), std::defer_lock);
      if (l.sink->posted) lock.lock();
      if (!l.sink->discard && !l.sink->cancelled)
        ringGet(l.inData, cap, l.inTail, l.sink->dst + l.payloadGot, n);
    }
    l.inTail += n;
    l.payloadGot += n;
    if (l.payloadGot == l.header.bytes) finishFrame(l);
  }
  l.in->tail.store(l.inTail, std::memory_order_seq_cst);
  if (l.in->wantSpace.load(std::memory_order_seq_cst) && l.in->wantSpace.exchange(0))
    shm::ring(l.peerHeader->rxBell);
  return true;
}

void ShmTransport::finishFrame(PeerQueues& l) {
  l.headerGot = 0;
  mailbox_->onPayload(l.peer, std::move(l.sink));
}

void ShmTransport::failDeadPeers() {
  for (auto& lp : peers_) {
    if (!lp) continue;
    PeerQueues& l = *lp;
    std::deque<std::shared_ptr<SendItem>> lost;
    {
      std::lock_guard<std::mutex> lock(l.sendMu);
      if (l.pending.empty() || l.dead) continue;
    }
    // The TCP link's EOF is what tells us a peer died: its queue will never
    // drain again, so what waits to go there fails now.
    std::string why = mailbox_->peerGoneReason(l.peer);
    if (why.empty()) continue;
    {
      std::lock_guard<std::mutex> lock(l.sendMu);
      l.dead = true;
      lost.swap(l.pending);
    }
    trace(rank_, "shared-memory link to rank " + std::to_string(l.peer) + " gone: " + why);
    auto error = std::make_exception_ptr(PeerError(why));
    for (auto& item : lost) item->req->fail(error);
  }
}

void ShmTransport::progressLoop() {
  shm::Header& me = *headers_[localOf_[rank_]];
  Deadline idleSince = Clock::now();
  int rounds = 0;
  while (!stop_) {
    uint32_t seen = me.rxBell.word.load(std::memory_order_acquire);
    bool worked = false;
    for (auto& l : peers_)
      if (l) worked |= drainIn(*l);
    for (auto& l : peers_)
      if (l) worked |= flushOut(*l);
    if (worked) {
      idleSince = Clock::now();
      continue;
    }
    if ((++rounds & 15) == 0) sched_yield();
    if (Clock::now() - idleSince < idleSpin_) continue;
    failDeadPeers();
    // Senders and draining consumers ring this bell; the timeout bounds how
    // late a dead peer's pending sends are noticed.
    shm::sleepOn(me.rxBell, seen, std::chrono::milliseconds(5));
  }
}

void ShmTransport::cancelSend(const RequestPtr& req) {
  if (req->done()) return;
  PeerQueues& l = *peers_[localOf_[req->peer()]];
  std::lock_guard<std::mutex> lock(l.sendMu);
  detachQueued(l.pending, req);
}

}  // namespace ringflow
