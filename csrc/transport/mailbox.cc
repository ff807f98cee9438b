#include "mailbox.h"

#include <algorithm>
#include <cstring>

namespace ringflow {
namespace {

// Abort reasons travel as text with a one-letter kind in front, so every
// rank raises the same class of error as the rank that failed first.
constexpr char kKindMismatch = 'M';
constexpr char kKindTimeout = 'T';
constexpr char kKindPeer = 'P';

std::string describeMismatch(int me, const OpDesc& mine, int peer, const OpDesc& theirs) {
  return "mismatched calls: rank " + std::to_string(me) + " called " + mine.str() + " but rank " +
         std::to_string(peer) + " called " + theirs.str();
}

// Why a message from `peer` is not the one rank `me` waits for, or "".
std::string matchError(int me, const OpDesc& mine, size_t myBytes, int peer, const OpDesc& theirs,
                       size_t theirBytes) {
  if (theirs != mine) return describeMismatch(me, mine, peer, theirs);
  if (theirBytes != myBytes)
    return "rank " + std::to_string(peer) + " sent " + std::to_string(theirBytes) +
           " bytes for " + theirs.str() + " but rank " + std::to_string(me) + " expected " +
           std::to_string(myBytes);
  return "";
}

}  // namespace

Mailbox::Mailbox(int rank, int size, AbortNotifier notify) : rank_(rank), notify_(std::move(notify)) {
  for (int i = 0; i < size; ++i) peers_.push_back(std::make_unique<PeerState>());
}

std::exception_ptr Mailbox::commError(const CommState& c) const {
  const std::string& why = c.aborted;
  std::string text = why.substr(1);
  switch (why[0]) {
    case kKindMismatch: return std::make_exception_ptr(MismatchError(text));
    case kKindTimeout: return std::make_exception_ptr(TimeoutError(text));
    default: return std::make_exception_ptr(PeerError(text));
  }
}

RequestPtr Mailbox::postRecv(int peer, const MsgKey& key, const OpDesc& desc, void* buf,
                             size_t bytes) {
  auto req = std::make_shared<Request>(peer, false);
  Unexpected early;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (key.channel == Channel::Collective) {
      auto c = comms_.find(key.comm);
      if (c != comms_.end() && !c->second.aborted.empty()) {
        req->fail(commError(c->second));
        return req;
      }
    }
    PeerState& p = *peers_[peer];
    auto u = p.unexpected.find(key);
    if (u != p.unexpected.end()) {
      early = std::move(u->second);
      p.unexpected.erase(u);
    } else if (!p.gone.empty()) {
      req->fail(std::make_exception_ptr(PeerError(p.gone)));
      return req;
    } else {
      p.posted.emplace(key, Posted{req, buf, bytes, desc});
      return req;
    }
  }
  // The message came first: copy it out of the unexpected queue (outside
  // the lock: it may be large).
  handOver(peer, Posted{req, buf, bytes, desc}, early.header, early.data);
  return req;
}

RequestPtr Mailbox::postRecvAny(const std::vector<int>& peers, const MsgKey& key, ClaimFn claim,
                                const OpDesc& desc, void* buf, size_t bytes) {
  auto req = std::make_shared<Request>(kAnySource, false);
  Posted want{req, buf, bytes, desc};
  Unexpected early;
  int from = kAnySource;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int peer : peers) {
      auto& early_ones = peers_[peer]->unexpected;
      for (auto it = early_ones.begin(); it != early_ones.end(); ++it) {
        const MsgKey& k = it->first;
        if (k.channel != Channel::P2P || k.comm != key.comm || k.slot != key.slot) continue;
        if (!claim(peer, k.seq)) continue;
        early = std::move(it->second);
        early_ones.erase(it);
        from = peer;
        break;
      }
      if (from != kAnySource) break;
    }
    if (from == kAnySource) {
      AnyPosted any{peers, key, std::move(claim), want};
      if (allGoneLocked(any)) {
        req->fail(std::make_exception_ptr(
            PeerError("receive from any source: every possible sender is gone (" +
                      peers_[peers.front()]->gone + ")")));
        return req;
      }
      anyPosted_.push_back(std::move(any));
      return req;
    }
    req->setSource(from);
  }
  want.desc.seq = early.header.seq;
  handOver(from, want, early.header, early.data);
  return req;
}

bool Mailbox::takeReceiverLocked(PeerState& p, int peer, const MsgKey& key, Posted& out) {
  auto posted = p.posted.find(key);
  if (posted != p.posted.end()) {
    out = posted->second;
    p.posted.erase(posted);
    return true;
  }
  return key.channel == Channel::P2P && claimAnyLocked(peer, key, out);
}

bool Mailbox::claimAnyLocked(int peer, const MsgKey& key, Posted& out) {
  for (auto it = anyPosted_.begin(); it != anyPosted_.end(); ++it) {
    if (it->key.comm != key.comm || it->key.slot != key.slot) continue;
    if (std::find(it->peers.begin(), it->peers.end(), peer) == it->peers.end()) continue;
    if (!it->claim(peer, key.seq)) continue;
    out = it->posted;
    out.desc.seq = key.seq;
    out.req->setSource(peer);
    anyPosted_.erase(it);
    return true;
  }
  return false;
}

bool Mailbox::allGoneLocked(const AnyPosted& any) const {
  for (int peer : any.peers)
    if (peers_[peer]->gone.empty()) return false;
  return !any.peers.empty();
}

void Mailbox::handOver(int peer, const Posted& want, const FrameHeader& h,
                       const std::vector<char>& data) {
  std::string why = matchError(rank_, want.desc, want.bytes, peer, h.desc(), data.size());
  if (!why.empty()) {
    want.req->fail(std::make_exception_ptr(MismatchError(why)));
    if (h.channel == Channel::Collective) abort(h.comm, why, true);
    return;
  }
  if (want.bytes) std::memcpy(want.buf, data.data(), want.bytes);
  want.req->complete();
}

void Mailbox::cancelRecv(const RequestPtr& req) {
  PeerState* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (req->peer() == kAnySource) {
      for (auto it = anyPosted_.begin(); it != anyPosted_.end(); ++it) {
        if (it->posted.req == req) {
          anyPosted_.erase(it);
          return;
        }
      }
    }
    int source = req->source();  // the sender an any-source receive took
    if (source == kAnySource) return;
    p = peers_[source].get();
    for (auto it = p->posted.begin(); it != p->posted.end(); ++it) {
      if (it->second.req == req) {
        p->posted.erase(it);
        return;
      }
    }
    if (p->active && p->active->posted == req) p->active->cancelled = true;
  }
  // A payload write into the buffer may be in progress: wait it out.
  std::lock_guard<std::mutex> wait(p->payloadMu);
}

std::string Mailbox::checkAgainstCurrent(int peer, const FrameHeader& h) {
  auto c = comms_.find(h.comm);
  if (c == comms_.end()) return "";  // a sub-communicator this rank has not created yet
  CommState& s = c->second;
  OpDesc theirs = h.desc();
  if (s.running && h.seq == s.current.seq && theirs != s.current)
    return describeMismatch(rank_, s.current, peer, theirs);
  if (h.seq < s.nextSeq && !(s.running && h.seq == s.current.seq))
    return "mismatched calls: rank " + std::to_string(peer) + " sent data for " + theirs.str() +
           ", a call rank " + std::to_string(rank_) + " had already finished as a different call";
  return "";
}

std::unique_ptr<Mailbox::Sink> Mailbox::onHeader(int peer, const FrameHeader& h) {
  auto sink = std::make_unique<Sink>();
  sink->header = h;
  std::string mismatch, failedWhy;
  std::vector<RequestPtr> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    PeerState& p = *peers_[peer];
    MsgKey key = h.key();
    bool collective = h.channel == Channel::Collective;
    auto c = comms_.find(h.comm);
    if (collective && c != comms_.end() && !c->second.aborted.empty()) {
      sink->discard = true;  // nobody waits for it any more
      p.active = sink.get();
      return sink;
    }
    if (collective) mismatch = checkAgainstCurrent(peer, h);
    Posted want;
    if (mismatch.empty() && takeReceiverLocked(p, peer, key, want)) {
      std::string why = matchError(rank_, want.desc, want.bytes, peer, h.desc(), h.bytes);
      if (why.empty()) {
        sink->posted = want.req;
        sink->dst = static_cast<char*>(want.buf);
      } else {
        failed.push_back(want.req);
        failedWhy = why;
        // A collective cannot go on; a point-to-point receive fails alone.
        if (collective) mismatch = why;
        sink->discard = true;
      }
    } else if (mismatch.empty()) {
      sink->unexpected.resize(h.bytes);
      sink->dst = sink->unexpected.data();
    } else {
      sink->discard = true;
    }
    p.active = sink.get();
  }
  for (auto& r : failed) r->fail(std::make_exception_ptr(MismatchError(failedWhy)));
  if (!mismatch.empty()) abort(h.comm, mismatch, true);
  return sink;
}

void Mailbox::onPayload(int peer, std::unique_ptr<Sink> sink) {
  RequestPtr done;
  Posted late;
  {
    std::lock_guard<std::mutex> lock(mu_);
    PeerState& p = *peers_[peer];
    p.active = nullptr;
    if (sink->posted) {
      if (!sink->cancelled) done = sink->posted;
    } else if (!sink->discard) {
      MsgKey key = sink->header.key();
      if (!takeReceiverLocked(p, peer, key, late)) {
        p.unexpected[key] = Unexpected{sink->header, std::move(sink->unexpected)};
        return;
      }
    }
  }
  if (done) {
    done->complete();
  } else if (late.req) {
    // Posted while the payload was arriving: handed over like any early message.
    handOver(peer, late, sink->header, sink->unexpected);
  }
}

void Mailbox::failLocked(uint64_t comm, const std::string& why, bool mismatch,
                         std::vector<RequestPtr>& failed) {
  CommState& c = comms_[comm];
  if (!c.aborted.empty()) return;
  c.aborted = why;
  c.mismatch = mismatch;
  for (auto& p : peers_) {
    for (auto it = p->posted.begin(); it != p->posted.end();) {
      if (it->first.comm == comm && it->first.channel == Channel::Collective) {
        failed.push_back(it->second.req);
        it = p->posted.erase(it);
      } else {
        ++it;
      }
    }
    Sink* a = p->active;
    if (a && a->posted && !a->cancelled && a->header.comm == comm &&
        a->header.channel == Channel::Collective)
      stopActiveLocked(*p, failed);
  }
  // Sub-rings of a failed communicator cannot finish either: a rank waiting
  // in one must hear of the failure even if its ring peer did not fail.
  std::vector<uint64_t> children;
  for (auto& [id, state] : comms_)
    if (state.parent == comm && state.aborted.empty()) children.push_back(id);
  for (uint64_t child : children) failLocked(child, why, mismatch, failed);
}

void Mailbox::stopActiveLocked(PeerState& p, std::vector<RequestPtr>& failed) {
  // Its payload is arriving now: divert the rest to the bin; the caller
  // waits out a write in progress (waitOutWrites) before failing it.
  p.active->cancelled = true;
  failed.push_back(p.active->posted);
}

void Mailbox::waitOutWrites() {
  for (auto& p : peers_) std::lock_guard<std::mutex> wait(p->payloadMu);
}

std::vector<int> Mailbox::othersLocked(uint64_t comm) {
  std::vector<int> out;
  for (int m : comms_[comm].members)
    if (m != rank_ && peers_[m]->gone.empty()) out.push_back(m);
  return out;
}

void Mailbox::abort(uint64_t comm, const std::string& why, bool mismatch) {
  char kind = mismatch ? kKindMismatch
              : why.find("timed out") != std::string::npos ? kKindTimeout
                                                           : kKindPeer;
  std::string coded = kind + why;
  std::vector<RequestPtr> failed;
  std::vector<int> notify;
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!comms_[comm].aborted.empty()) return;
    failLocked(comm, coded, mismatch, failed);
    notify = othersLocked(comm);
    error = commError(comms_[comm]);
  }
  waitOutWrites();
  for (auto& r : failed) r->fail(error);
  for (int peer : notify) notify_(peer, comm, coded);
}

void Mailbox::onAbortFrame(int peer, uint64_t comm, const std::string& coded) {
  if (coded.empty()) return;
  std::vector<RequestPtr> failed;
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!comms_[comm].aborted.empty()) return;
    std::string text = coded.substr(1);
    std::string prefix = "rank " + std::to_string(peer) + " failed: ";
    if (text.rfind("rank ", 0) == 0 && text.find(" failed: ") != std::string::npos) prefix.clear();
    failLocked(comm, coded.substr(0, 1) + prefix + text, coded[0] == kKindMismatch, failed);
    error = commError(comms_[comm]);
  }
  waitOutWrites();
  for (auto& r : failed) r->fail(error);
}

void Mailbox::peerGone(int peer, const std::string& why) {
  std::vector<RequestPtr> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    PeerState& p = *peers_[peer];
    if (!p.gone.empty()) return;
    p.gone = why;
    for (auto& kv : p.posted) failed.push_back(kv.second.req);
    p.posted.clear();
    for (auto it = anyPosted_.begin(); it != anyPosted_.end();) {
      if (allGoneLocked(*it)) {
        failed.push_back(it->posted.req);
        it = anyPosted_.erase(it);
      } else {
        ++it;
      }
    }
    if (p.active && p.active->posted && !p.active->cancelled) stopActiveLocked(p, failed);
  }
  waitOutWrites();
  auto error = std::make_exception_ptr(PeerError(why));
  for (auto& r : failed) r->fail(error);
}

std::string Mailbox::peerGoneReason(int peer) {
  std::lock_guard<std::mutex> lock(mu_);
  return peers_[peer]->gone;
}

void Mailbox::registerComm(uint64_t comm, const std::vector<int>& members, uint64_t parent) {
  std::lock_guard<std::mutex> lock(mu_);
  comms_[comm].members = members;
  comms_[comm].parent = parent;
  // Born into an aborted family: aborted from the start.
  auto p = comms_.find(parent);
  if (parent && p != comms_.end() && !p->second.aborted.empty()) {
    comms_[comm].aborted = p->second.aborted;
    comms_[comm].mismatch = p->second.mismatch;
  }
}

void Mailbox::beginOp(uint64_t comm, const OpDesc& desc) {
  std::string mismatch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    CommState& c = comms_[comm];
    if (!c.aborted.empty()) std::rethrow_exception(commError(c));
    c.running = true;
    c.current = desc;
    // Frames may have come before this call began: check them now.
    for (int m : c.members) {
      if (m == rank_) continue;
      for (auto& kv : peers_[m]->unexpected) {
        const FrameHeader& h = kv.second.header;
        if (h.comm == comm && h.channel == Channel::Collective && h.seq == desc.seq &&
            h.desc() != desc) {
          mismatch = describeMismatch(rank_, desc, m, h.desc());
          break;
        }
      }
      if (!mismatch.empty()) break;
    }
  }
  if (!mismatch.empty()) {
    abort(comm, mismatch, true);
    throw MismatchError(mismatch);
  }
}

void Mailbox::endOp(uint64_t comm) {
  std::lock_guard<std::mutex> lock(mu_);
  CommState& c = comms_[comm];
  c.running = false;
  c.nextSeq = c.current.seq + 1;
}

std::string Mailbox::abortReason(uint64_t comm) {
  std::lock_guard<std::mutex> lock(mu_);
  auto c = comms_.find(comm);
  if (c == comms_.end() || c->second.aborted.empty()) return "";
  return c->second.aborted.substr(1);
}

std::exception_ptr Mailbox::abortError(uint64_t comm) {
  std::lock_guard<std::mutex> lock(mu_);
  auto c = comms_.find(comm);
  if (c == comms_.end() || c->second.aborted.empty()) return nullptr;
  return commError(c->second);
}

}  // namespace ringflow
