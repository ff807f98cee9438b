// The transport a process uses when some peers share its host: data frames
// to those peers go through shared memory, everything else (other hosts,
// Abort and Bye control frames) through the TCP mesh.  Both deliver into the
// TCP transport's Mailbox, so matching, mismatch detection and abort state
// are the same whichever link a frame took; a peer's death is still noticed
// by its TCP link's EOF, which fails waits on its shared-memory queue too.
#pragma once

#include <memory>

#include "ringflow/shm.h"
#include "ringflow/tcp.h"

namespace ringflow {

class RoutedTransport : public Transport {
 public:
  RoutedTransport(std::shared_ptr<TcpTransport> tcp, std::shared_ptr<ShmTransport> shm);
  ~RoutedTransport() override;

  int rank() const override { return tcp_->rank(); }
  int size() const override { return tcp_->size(); }
  const char* name() const override { return "tcp+shm"; }
  RequestPtr send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                  size_t bytes) override;
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
  std::shared_ptr<TcpTransport> tcp_;
  std::shared_ptr<ShmTransport> shm_;
};

}  // namespace ringflow
