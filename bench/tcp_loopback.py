"""The machine's loopback-TCP limit for a ring step: two processes exchange
S bytes each way at once over one socket (plain Python sockets, a thread
sending while the main thread receives).  A 2-rank ring allreduce of S bytes
moves exactly S each way per rank, so this bounds any TCP transport here.

    python bench/tcp_loopback.py [--mib 16] [--iters 8]
"""

import argparse
import multiprocessing as mp
import socket
import statistics
import threading
import time


def _peer(listen_sock, port, nbytes, iters, results):
    if listen_sock is not None:
        s, _ = listen_sock.accept()
    else:
        s = socket.create_connection(("127.0.0.1", port))
    out, buf = bytes(nbytes), bytearray(nbytes)
    view = memoryview(buf)
    times = []
    for _ in range(iters):
        s.sendall(b"x")
        s.recv(1)  # both sides start together
        t0 = time.perf_counter()
        sender = threading.Thread(target=s.sendall, args=(out,))
        sender.start()
        got = 0
        while got < nbytes:
            got += s.recv_into(view[got:], nbytes - got)
        sender.join()
        times.append(time.perf_counter() - t0)
    results.put(statistics.median(times[2:]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--iters", type=int, default=8)
    args = p.parse_args()
    nbytes = args.mib << 20
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    a = ctx.Process(target=_peer, args=(ls, port, nbytes, args.iters, results))
    b = ctx.Process(target=_peer, args=(None, port, nbytes, args.iters, results))
    a.start()
    b.start()
    a.join(120)
    b.join(120)
    t = max(results.get(timeout=5), results.get(timeout=5))
    print(f"{args.mib} MiB each way at once over loopback TCP: {t * 1e3:.2f} ms p50 "
          f"({nbytes / t / 1e9:.2f} GB/s per direction)")


if __name__ == "__main__":
    main()
