#include "ringflow/routed.h"

#include "trace.h"

namespace ringflow {

RoutedTransport::RoutedTransport(std::shared_ptr<TcpTransport> tcp,
                                 std::shared_ptr<ShmTransport> shm)
    : tcp_(std::move(tcp)), shm_(std::move(shm)) {
  if (tcp_->rank() != shm_->rank())
    throw InvalidArgument("TCP and shared-memory transports belong to different ranks");
}

RoutedTransport::~RoutedTransport() { close(); }

RequestPtr RoutedTransport::send(int peer, const MsgKey& key, const OpDesc& desc,
                                 const void* data, size_t bytes) {
  if (peer != rank() && shm_->reaches(peer)) return shm_->send(peer, key, desc, data, bytes);
  return tcp_->send(peer, key, desc, data, bytes);
}

RequestPtr RoutedTransport::recv(int peer, const MsgKey& key, const OpDesc& desc, void* data,
                                 size_t bytes) {
  return tcp_->recv(peer, key, desc, data, bytes);  // the shared mailbox
}

RequestPtr RoutedTransport::recvAny(const std::vector<int>& peers, const MsgKey& key,
                                    ClaimFn claim, const OpDesc& desc, void* data,
                                    size_t bytes) {
  return tcp_->recvAny(peers, key, std::move(claim), desc, data, bytes);  // the shared mailbox
}

void RoutedTransport::cancel(const RequestPtr& req) {
  if (req->isSend() && shm_->reaches(req->peer())) return shm_->cancelSend(req);
  tcp_->cancel(req);
}

void RoutedTransport::registerComm(uint64_t comm, const std::vector<int>& members,
                                   uint64_t parent) {
  tcp_->registerComm(comm, members, parent);
  shm_->offerArena(comm, members);
}

void RoutedTransport::beginOp(uint64_t comm, const OpDesc& desc) {
  tcp_->beginOp(comm, desc);
  if (comm == shm_->arenaComm()) shm_->publishCurrent(desc);
}
void RoutedTransport::endOp(uint64_t comm) { tcp_->endOp(comm); }
void RoutedTransport::abort(uint64_t comm, const std::string& why) { tcp_->abort(comm, why); }
std::string RoutedTransport::abortReason(uint64_t comm) { return tcp_->abortReason(comm); }

void RoutedTransport::close() {
  // Data still in a queue must reach its peer before the goodbye does.
  shm_->drain(2.0);
  tcp_->close();
  shm_->close();
}

}  // namespace ringflow
