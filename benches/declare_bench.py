# Times metadata changes one call at a time: python3 benches/declare_bench.py URL COUNT (needs pika).
import sys, time, pika
url = sys.argv[1]; n = int(sys.argv[2])
c = pika.BlockingConnection(pika.URLParameters(url)); ch = c.channel()
def timed(label, f):
    t = time.perf_counter(); lat = []
    for i in range(n):
        s = time.perf_counter(); f(i); lat.append(time.perf_counter() - s)
    total = time.perf_counter() - t; lat.sort()
    print(f"{label}: {n/total:.0f}/s  p50 {lat[n//2]*1e3:.2f} ms  p99 {lat[int(n*.99)]*1e3:.2f} ms")
timed("durable queue.declare", lambda i: ch.queue_declare(f"bench-d-{i}", durable=True))
timed("exclusive server-named queue.declare", lambda i: ch.queue_declare("", exclusive=True))
timed("queue.bind", lambda i: ch.queue_bind(f"bench-d-{i}", "amq.topic", f"k.{i}"))
timed("queue.delete", lambda i: ch.queue_delete(f"bench-d-{i}"))
c.close()
