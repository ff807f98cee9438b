// The transport a process uses when some peers share its host: data frames
// go over the first link that reaches their peer (shared memory to ranks on
// this host, TCP to everyone else); TCP stays the control link, carrying
// Abort and Bye frames and owning the Mailbox every link delivers into, so
// matching, mismatch detection and abort state are the same whichever link
// a frame took.  A peer's death is still noticed by its TCP link's EOF,
// which fails waits on its shared-memory queue too.
#pragma once

#include <memory>
#include <vector>

#include "ringflow/shm.h"
#include "ringflow/tcp.h"

namespace ringflow {

class RoutedTransport : public Transport {
 public:
  RoutedTransport(std::shared_ptr<TcpTransport> tcp, std::shared_ptr<ShmTransport> shm);
  ~RoutedTransport() override;

  int rank() const override { return control_->rank(); }
  int size() const override { return control_->size(); }
  const char* name() const override { return "tcp+shm"; }
  RequestPtr send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                  size_t bytes) override {
    return route_[peer]->send(peer, key, desc, data, bytes);
  }
  RequestPtr recv(int peer, const MsgKey& key, const OpDesc& desc, void* data,
                  size_t bytes) override;
  RequestPtr recvAny(const std::vector<int>& peers, const MsgKey& key, ClaimFn claim,
                     const OpDesc& desc, void* data, size_t bytes) override;
  void cancel(const RequestPtr& req) override;
  void registerComm(uint64_t comm, const std::vector<int>& members, uint64_t parent) override;
  void beginOp(uint64_t comm, const OpDesc& desc) override;
  void endOp(uint64_t comm) override;
  void abort(uint64_t comm, const std::string& why) override;
  std::string abortReason(uint64_t comm) override;
  void close() override;
  ShmTransport* sharedMemory() override { return shm_.get(); }

 private:
  std::shared_ptr<TcpTransport> control_;
  std::shared_ptr<ShmTransport> shm_;
  std::vector<Link*> links_;  // asked in this order; the control link last
  std::vector<Link*> route_;  // per peer: the first link that reaches it
};

}  // namespace ringflow
