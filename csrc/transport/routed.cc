#include "ringflow/routed.h"

namespace ringflow {

RoutedTransport::RoutedTransport(std::shared_ptr<TcpTransport> tcp,
                                 std::shared_ptr<ShmTransport> shm)
    : control_(std::move(tcp)), shm_(std::move(shm)) {
  if (control_->rank() != shm_->rank())
    throw InvalidArgument("TCP and shared-memory transports belong to different ranks");
  // Preferred first; the control link reaches everyone.
  links_ = {shm_.get(), control_.get()};
  route_.assign(size_t(control_->size()), control_.get());
  for (int peer = 0; peer < control_->size(); ++peer)
    for (Link* link : links_)
      if (link->reaches(peer)) {
        route_[peer] = link;
        break;
      }
}

RoutedTransport::~RoutedTransport() { close(); }

RequestPtr RoutedTransport::recv(int peer, const MsgKey& key, const OpDesc& desc, void* data,
                                 size_t bytes) {
  return control_->recv(peer, key, desc, data, bytes);  // the shared mailbox
}

RequestPtr RoutedTransport::recvAny(const std::vector<int>& peers, const MsgKey& key,
                                    ClaimFn claim, const OpDesc& desc, void* data,
                                    size_t bytes) {
  return control_->recvAny(peers, key, std::move(claim), desc, data, bytes);  // the shared mailbox
}

void RoutedTransport::cancel(const RequestPtr& req) {
  if (req->isSend()) return route_[req->peer()]->cancelSend(req);
  control_->cancel(req);
}

void RoutedTransport::registerComm(uint64_t comm, const std::vector<int>& members,
                                   uint64_t parent) {
  control_->registerComm(comm, members, parent);
  for (Link* link : links_) link->commRegistered(comm, members);
}

void RoutedTransport::beginOp(uint64_t comm, const OpDesc& desc) {
  control_->beginOp(comm, desc);
  for (Link* link : links_) link->opBegun(comm, desc);
}
void RoutedTransport::endOp(uint64_t comm) { control_->endOp(comm); }
void RoutedTransport::abort(uint64_t comm, const std::string& why) { control_->abort(comm, why); }
std::string RoutedTransport::abortReason(uint64_t comm) { return control_->abortReason(comm); }

void RoutedTransport::close() {
  // Data still in a queue must reach its peer before the goodbye does.
  for (Link* link : links_)
    if (link != control_.get()) link->drain(2.0);
  control_->close();
  for (Link* link : links_)
    if (link != control_.get()) link->close();
}

}  // namespace ringflow
