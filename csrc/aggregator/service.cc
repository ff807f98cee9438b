// The aggregator's service loop: drain the socket in batches, let the job
// table add and answer, send the answers in one batch, repeat.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "faults.h"
#include "job_table.h"
#include "ringflow/aggregator.h"
#include "ringflow/types.h"
#include "udp.h"

namespace ringflow::agg {
namespace {

void checkConfig(const AggregatorConfig& c) {
  auto bad = [](const std::string& what) { throw InvalidArgument("aggregator: " + what); };
  if (c.workers < 0 || c.workers > 64)
    bad("workers must be 1..64 (or 0 for any), got " + std::to_string(c.workers));
  if (c.jobs < 1 || c.jobs > 1024) bad("jobs must be 1..1024, got " + std::to_string(c.jobs));
  if (c.slots < 1 || c.slots > 4096) bad("slots must be 1..4096, got " + std::to_string(c.slots));
  if (c.packetElems < 1 || c.packetElems > kMaxPacketElems)
    bad("packet_elems must be 1.." + std::to_string(kMaxPacketElems) + ", got " +
        std::to_string(c.packetElems));
  if (!(c.jobIdleSec > 0)) bad("job_idle_s must be > 0");
}

}  // namespace

Aggregator::Aggregator(AggregatorConfig config) : config_(std::move(config)) {
  checkConfig(config_);
  parseFaults(config_.faults);  // reject a bad spec before serving
  Endpoint at = parseEndpoint(config_.host + ":" + std::to_string(config_.port));
  if (!isLoopback(at.addr) && config_.token.empty())
    throw InvalidArgument("aggregator: listening on " + config_.host +
                          " (beyond loopback) needs a job token (RINGFLOW_AGG_TOKEN), so that "
                          "only the job's workers can add to its sums");
  UdpPath path = udpPathSetting();
  fd_ = openUdp(at.addr.ss_family, kServiceSocketBuffer);
  try {
    port_ = bindUdp(fd_, at);
    mode_ = std::make_unique<UdpMode>(setupUdpPath(fd_, path));
  } catch (...) {
    close(fd_);
    throw;
  }
  wakeFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  table_ = std::make_unique<JobTable>(config_);
  calls_ = std::make_unique<UdpCalls>();
}

Aggregator::~Aggregator() {
  stop();
  if (thread_.joinable()) thread_.join();
  close(fd_);
  close(wakeFd_);
}

void Aggregator::start() {
  if (thread_.joinable()) throw InvalidArgument("aggregator: already started");
  thread_ = std::thread([this] { run(); });
}

void Aggregator::stop() {
  stopping_.store(true);
  uint64_t one = 1;
  ssize_t ignored = write(wakeFd_, &one, sizeof one);
  (void)ignored;
}

AggregatorStats Aggregator::stats() const {
  AggregatorStats s = table_->stats();
  s.udpPath = udpPathName(mode_->path);
  s.gso = mode_->gso, s.gro = mode_->gro, s.gsoMaxSegment = mode_->gsoMaxSegment;
  s.sendCalls = calls_->sendCalls, s.recvCalls = calls_->recvCalls;
  s.gsoSends = calls_->gsoSends, s.gsoDatagrams = calls_->gsoDatagrams;
  s.gsoBytes = calls_->gsoBytes;
  s.groReceives = calls_->groReceives, s.groDatagrams = calls_->groDatagrams;
  return s;
}

void Aggregator::run() {
  RecvBatch in(kRecvBatch, kRecvBytes, mode_->path, calls_.get());
  SendBatch out(*mode_, calls_.get());
  std::vector<Reply> replies;
  FaultInjector faults(parseFaults(config_.faults), uint64_t(getpid()) * 0x9e3779b97f4a7c15ull);
  auto lastEvict = SteadyClock::now();
  pollfd fds[2] = {{fd_, POLLIN, 0}, {wakeFd_, POLLIN, 0}};
  while (!stopping_.load()) {
    if (poll(fds, 2, 1000) < 0 && errno != EINTR) throw Error("aggregator: poll failed");
    int n;
    while (!stopping_.load() && (n = in.receive(fd_)) > 0) {
      auto now = SteadyClock::now();
      for (int i = 0; i < n; ++i)
        table_->handle(in.data(i), in.length(i), in.truncated(i), in.from(i), in.fromLength(i),
                       now, replies);
      for (const Reply& r : replies)
        faults.add(out, r.to, r.toLen, r.header, sizeof(PacketHeader), r.payload, r.payloadBytes);
      replies.clear();
      faults.releaseInto(out);
      table_->countSent(out.size(), out.bytes());
      out.flush(fd_);
      table_->repliesSent();
    }
    auto now = SteadyClock::now();
    if (now - lastEvict > std::chrono::seconds(1)) {
      table_->evictIdle(now);
      lastEvict = now;
    }
  }
}

}  // namespace ringflow::agg
