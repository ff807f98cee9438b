// measureUdpFloor (ringflow/aggregator.h): worker threads and a relay thread moving an
// aggregate call's datagrams over loopback with the same sockets, batches
// and offloads as the client and the service, and nothing else.
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "ringflow/aggregator.h"
#include "ringflow/packet.h"
#include "ringflow/types.h"
#include "udp.h"

namespace ringflow::agg {
namespace {

constexpr int kLostMs = 2000;  // loopback delivers within this, or lost it

// What the first bytes of every datagram say (the rest is never read).
struct Tag {
  uint32_t call, chunk, worker;
};

struct Shape {
  size_t elements, k, slots, chunks;
  int workers;
  size_t bytesOf(size_t chunk) const {
    return sizeof(PacketHeader) + 4 * std::min(k, elements - chunk * k);
  }
};

double cpuSeconds(std::thread& t) {
  clockid_t id;
  timespec ts{};
  if (pthread_getcpuclockid(t.native_handle(), &id) != 0 || clock_gettime(id, &ts) != 0)
    throw Error("udp floor: cannot read a thread's CPU clock");
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// One worker's side: its connected socket, a buffer per window slot (as the
// client keeps one per lane), and one call at a time.
class FloorWorker {
 public:
  FloorWorker(const Shape& s, int rank, int fd, UdpMode mode, UdpCalls* calls)
      : s_(s), rank_(rank), fd_(fd), out_(mode, calls),
        in_(kRecvBatch, kRecvBytes, mode.path, calls),
        packets_(s.slots, std::vector<char>(s.bytesOf(0), 0)) {}

  void call(uint32_t number) {
    size_t next = 0, done = 0;
    auto send = [&](size_t chunk) {
      char* p = packets_[chunk % s_.slots].data();
      Tag t{number, uint32_t(chunk), uint32_t(rank_)};
      std::memcpy(p, &t, sizeof t);
      out_.add(nullptr, 0, p, s_.bytesOf(chunk));
    };
    for (; next < std::min(s_.slots, s_.chunks); ++next) send(next);
    out_.flush(fd_);
    pollfd p{fd_, POLLIN, 0};
    while (done < s_.chunks) {
      if (poll(&p, 1, kLostMs) == 0)
        throw Error("udp floor: worker " + std::to_string(rank_) + " got " +
                    std::to_string(done) + " of " + std::to_string(s_.chunks) +
                    " datagrams back (some were lost)");
      for (int got; (got = in_.receive(fd_)) > 0;) {
        done += size_t(got);
        for (int i = 0; i < got && next < s_.chunks; ++i) send(next++);
        out_.flush(fd_);
      }
    }
  }

 private:
  const Shape& s_;
  int rank_, fd_;
  SendBatch out_;
  RecvBatch in_;
  std::vector<std::vector<char>> packets_;
};

// The relay: counts each chunk's datagrams and, at the last worker's, sends
// that datagram to every worker (the aggregator sends its sum instead).
void relay(const Shape& s, int fd, UdpMode mode, UdpCalls* calls, const std::atomic<bool>& stop) {
  RecvBatch in(kRecvBatch, kRecvBytes, mode.path, calls);
  SendBatch out(mode, calls);
  std::vector<sockaddr_storage> addrs(size_t(s.workers));
  std::vector<socklen_t> lens(size_t(s.workers), 0);
  std::vector<int> seen(s.chunks, 0);
  uint32_t current = 0;
  pollfd p{fd, POLLIN, 0};
  while (!stop.load()) {
    poll(&p, 1, 20);
    for (int got; (got = in.receive(fd)) > 0;) {
      for (int i = 0; i < got; ++i) {
        Tag t;
        if (in.length(i) < sizeof t) continue;
        std::memcpy(&t, in.data(i), sizeof t);
        if (t.worker >= uint32_t(s.workers) || t.chunk >= s.chunks) continue;
        if (t.call != current) std::fill(seen.begin(), seen.end(), 0), current = t.call;
        std::memcpy(&addrs[t.worker], &in.from(i), in.fromLength(i));
        lens[t.worker] = in.fromLength(i);
        if (++seen[t.chunk] < s.workers) continue;
        for (int w = 0; w < s.workers; ++w)
          out.add(&addrs[size_t(w)], lens[size_t(w)], in.data(i), in.length(i));
      }
      out.flush(fd);
    }
  }
}

}  // namespace

UdpFloor measureUdpFloor(int workers, size_t elements, uint32_t packetElems, uint32_t slots,
                         int calls) {
  if (workers < 1 || workers > 64 || elements == 0 || calls < 1 || slots < 1 ||
      packetElems < 1 || packetElems > kMaxPacketElems)
    throw InvalidArgument("udp floor: needs 1..64 workers, elements, calls and slots >= 1, and "
                          "1.." + std::to_string(kMaxPacketElems) + " elements per packet");
  Shape s{elements, packetElems, slots, (elements + packetElems - 1) / packetElems, workers};
  UdpPath path = udpPathSetting();
  UdpCalls counters;
  std::vector<int> fds;
  struct Closer {
    std::vector<int>& fds;
    ~Closer() { for (int fd : fds) close(fd); }
  } closer{fds};
  Endpoint at = parseEndpoint("127.0.0.1:0");
  fds.push_back(openUdp(AF_INET, kServiceSocketBuffer));
  reinterpret_cast<sockaddr_in&>(at.addr).sin_port = htons(uint16_t(bindUdp(fds[0], at)));
  UdpMode relayMode = setupUdpPath(fds[0], path);
  std::vector<std::unique_ptr<FloorWorker>> sides;
  for (int w = 0; w < workers; ++w) {
    int fd = openUdp(AF_INET, kWorkerSocketBuffer);
    fds.push_back(fd);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&at.addr), at.len) != 0)
      throw Error(std::string("udp floor: connect: ") + std::strerror(errno));
    sides.push_back(std::make_unique<FloorWorker>(s, w, fd, setupUdpPath(fd, path), &counters));
  }

  std::mutex mu;
  std::condition_variable cv;
  int generation = 0, finished = 0;
  bool quit = false;
  std::exception_ptr error;
  std::atomic<bool> stopRelay{false};
  std::thread relayThread([&] {
    try {
      relay(s, fds[0], relayMode, &counters, stopRelay);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
  });
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      for (int g = 1;; ++g) {
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return quit || generation >= g; });
          if (quit) return;
        }
        std::exception_ptr failed;
        try {
          sides[size_t(w)]->call(uint32_t(g));
        } catch (...) {
          failed = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(mu);
        if (failed && !error) error = failed;
        ++finished;
        cv.notify_all();
      }
    });

  UdpFloor result;
  auto cpuNow = [&] {
    std::vector<double> c{cpuSeconds(relayThread)};
    for (auto& t : threads) c.push_back(cpuSeconds(t));
    return c;
  };
  std::vector<double> before, after;
  for (int call = 0; call <= calls; ++call) {  // call 0 warms up
    if (call == 1) before = cpuNow();
    auto t0 = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu);
    finished = 0;
    ++generation;
    cv.notify_all();
    cv.wait(lock, [&] { return finished == workers; });
    if (error) break;
    if (call > 0)
      result.seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (result.seconds.size() == size_t(calls)) after = cpuNow();
  {
    std::lock_guard<std::mutex> lock(mu);
    quit = true;
    cv.notify_all();
  }
  for (auto& t : threads) t.join();
  stopRelay.store(true);
  relayThread.join();
  if (error) std::rethrow_exception(error);
  result.relayCpu = (after[0] - before[0]) / calls;
  for (int w = 0; w < workers; ++w) result.workerCpu += (after[size_t(w) + 1] - before[size_t(w) + 1]);
  result.workerCpu /= double(calls) * workers;
  return result;
}

}  // namespace ringflow::agg
