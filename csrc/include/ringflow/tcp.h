// A Link per peer over TCP: framed messages, non-blocking sockets driven by
// one progress thread, full mesh between the ranks of a group.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ringflow/transport.h"

namespace ringflow {

class Mailbox;
struct SendItem;

// Also the control link of a RoutedTransport: it owns the Mailbox every link
// delivers into, carries Abort and Bye frames, and reaches every peer.
class TcpTransport : public Transport, public Link {
 public:
  // Binds and listens on `bindHost` (an ephemeral port), so the address can
  // be published before anyone connects.
  TcpTransport(int rank, int size, const std::string& bindHost);
  ~TcpTransport() override;

  int port() const { return port_; }
  // `addrs[r]` is "host:port" of rank r.  Lower ranks accept, higher ranks
  // connect, retrying until `timeoutSec`; `token` keeps strangers out.
  void connect(const std::vector<std::string>& addrs, uint64_t token, double timeoutSec);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "tcp"; }
  RequestPtr send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                  size_t bytes) override;
  RequestPtr recv(int peer, const MsgKey& key, const OpDesc& desc, void* data,
                  size_t bytes) override;
  RequestPtr recvAny(const std::vector<int>& peers, const MsgKey& key, ClaimFn claim,
                     const OpDesc& desc, void* data, size_t bytes) override;
  void cancel(const RequestPtr& req) override;
  bool reaches(int peer) const override { return peer >= 0 && peer < size_ && peer != rank_; }
  void cancelSend(const RequestPtr& req) override { cancel(req); }
  void registerComm(uint64_t comm, const std::vector<int>& members, uint64_t parent) override;
  void beginOp(uint64_t comm, const OpDesc& desc) override;
  void endOp(uint64_t comm) override;
  void abort(uint64_t comm, const std::string& why) override;
  std::string abortReason(uint64_t comm) override;
  void close() override;

  // The mailbox every frame for this process lands in.  Shared so that other
  // links to the same peers (shared memory) deliver into it too: one place
  // matches receives, checks call descriptors and holds the abort state.
  std::shared_ptr<Mailbox> mailbox() const { return mailbox_; }

 private:
  struct Conn;

  RequestPtr enqueue(int peer, std::shared_ptr<SendItem> item);
  bool writeSome(Conn& c, SendItem& item);  // true when the item is fully written
  void flush(Conn& c);
  void readSome(Conn& c);
  void finishFrame(Conn& c);
  void connGone(Conn& c, const std::string& why);
  // Returns once every queued frame is in the kernel's hands (or its link is
  // gone), or at `until`.
  void waitQueuesDrained(Deadline until);
  void setWantWrite(Conn& c, bool on);
  void progressLoop();

  int rank_;
  int size_;
  int port_ = 0;
  int listenFd_ = -1;
  int epollFd_ = -1;
  int wakeFd_ = -1;
  std::vector<std::string> addrs_;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::shared_ptr<Mailbox> mailbox_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> closed_{false};
};

}  // namespace ringflow
