#!/usr/bin/env python3
"""A quorum queue failing over, as a pika application sees it.

Usage:  python3 quorum_failover.py DECLARE_URL PUBLISH_URL CONSUME_URL

Declares a quorum queue through the first node, publishes with confirms through the second
and consumes through the third. Half-way it prints "ready" and waits for a line on stdin: the
test stops the queue's leader (the first node) meanwhile and then writes "go". The publisher
and the consumer go on, on the same connections and channels: every publish is confirmed
(pika raises on a nack), every confirmed message is delivered, and a message that comes again
is marked redelivered. Prints "ok" and exits 0, or raises.
"""

import sys

import pika

QUEUE = "pika-qq"
FIRST, SECOND = range(0, 100), range(100, 200)


def main():
    declare_url, publish_url, consume_url = sys.argv[1:4]
    with pika.BlockingConnection(pika.URLParameters(declare_url)) as connection:
        connection.channel().queue_declare(
            QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )

    publisher = pika.BlockingConnection(pika.URLParameters(publish_url))
    publishing = publisher.channel()
    publishing.confirm_delivery()
    consumer = pika.BlockingConnection(pika.URLParameters(consume_url))
    consuming = consumer.channel()
    consuming.basic_qos(prefetch_count=10)

    def publish(indexes):
        for index in indexes:
            # Blocks until the confirm; a nack raises NackError.
            publishing.basic_publish(
                "",
                QUEUE,
                str(index).encode(),
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )

    seen = set()

    def consume_until(count):
        for method, _properties, body in consuming.consume(QUEUE, inactivity_timeout=15):
            if method is None:
                raise AssertionError(f"no delivery in 15 s with {len(seen)} of {count} seen")
            index = int(body)
            if index in seen and not method.redelivered:
                raise AssertionError(f"{index} came again without redelivered")
            seen.add(index)
            consuming.basic_ack(method.delivery_tag)
            if len(seen) >= count:
                return

    publish(FIRST)
    consume_until(50)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise AssertionError("the test did not say go")
    publish(SECOND)
    consume_until(200)
    if seen != set(FIRST) | set(SECOND):
        raise AssertionError(f"missing: {sorted(set(FIRST) | set(SECOND) - seen)[:20]}")
    consuming.cancel()
    consumer.close()
    publisher.close()
    print("ok")


if __name__ == "__main__":
    main()
