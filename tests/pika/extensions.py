#!/usr/bin/env python3
"""RabbitMQ AMQP 0-9-1 *extension* conformance checks using the pika client.

Usage:  python3 pika_extensions.py amqp://guest:guest@127.0.0.1:5672/%2F [name-substring | -name-substring ...]

Companion of conformance.py (core protocol).  Covers RabbitMQ's extensions:
message/queue TTL, dead-lettering (x-death), queue length limits and overflow,
priority queues, single active consumer, consumer priorities, alternate
exchanges, exchange-to-exchange bindings, sender-selected distribution
(CC/BCC), direct reply-to, transactions with acks/rejects, validated user-id,
auto-delete exchanges, exclusive queues and queue/consumer argument
validation.

Prints "ok <name>" or "FAIL <name>: <reason>" per check; exits 1 if any
check failed.  Every expectation was validated against a real RabbitMQ (see
VALIDATED_AGAINST).  Where RabbitMQ changed behaviour after 3.10 the check
reads the broker's advertised version (server_properties.version) and expects
the behaviour of that version; such branches are marked "4.x differs:" and
cite the RabbitMQ source / docs the 4.x expectation comes from (the 4.x
branches could not be run against a live 4.x broker here).

Design rules (same as conformance.py):
  * every check uses fresh, uniquely named queues/exchanges and cleans up
    (through a fresh connection, since checks deliberately kill channels);
  * no bare sleeps: asynchronous things are awaited by polling
    connection.process_data_events(time_limit=...) against a deadline; the
    only "negative" waits (assert that nothing more arrives, or let a TTL run
    out) are bounded polling windows;
  * errors triggered by asynchronous methods (basic.publish/ack/nack/reject)
    are observed through a "barrier": a following synchronous RPC, which
    raises ChannelClosedByBroker / ConnectionClosedByBroker once the server's
    close arrives (the server processes frames on a channel in order);
  * a per-check SIGALRM guard makes a hung broker fail one check instead of
    hanging the whole run;
  * NOTE: in RabbitMQ a publish reaches the queue process through a
    different path (delegate) than a later queue.declare/basic.get on the
    same channel, so "publish; passive declare" may count the queue BEFORE
    the message arrives.  Checks that assert counts/order right after
    publishing therefore publish on a confirm channel (the ack is sent once
    the queue has the message) or wait for the positive count first;
  * queue existence for x-expires checks is probed WITHOUT touching the queue
    (a passive queue.declare renews the x-expires lease!): a mandatory
    publish on a confirm channel is unroutable once the queue is gone.

Surprising RabbitMQ facts learned while validating are marked "NOTE:".
Optional extra args after the URL select checks whose name contains any of
them; an argument starting with '-' excludes the checks whose name contains
the rest of it.
"""

import datetime
import os
import re
import signal
import struct
import sys
import time
import traceback
import uuid

import pika
import pika.data
from pika.exceptions import (ChannelClosedByBroker, ConnectionClosedByBroker,
                             NackError, UnroutableError)

VALIDATED_AGAINST = "RabbitMQ 3.10.8 (Erlang/OTP 25), pika 1.4.x"

CHECK_TIMEOUT = 10          # seconds per check (SIGALRM guard)
TOTAL_BUDGET = 60           # after this, remaining checks FAIL unrun
WAIT = 5.0                  # default deadline for positive waits
NEGATIVE_WINDOW = 0.3       # bounded window to assert "nothing more arrives"

# ---------------------------------------------------------------------------
# pika table codec extensions (copied from conformance.py).
# pika cannot encode Python floats at all and decodes 'f'/'d' through long()
# (truncating!).  It also has no way to choose the narrow integer types.
#   * float  -> 'd' (64-bit IEEE double), decoded back to float;
#   * Typed(tag, value) -> any explicit field type ('b','B','s','u','I','i',
#     'l','f','d'); on decode 'f'/'d' become float.
# ---------------------------------------------------------------------------


class Typed(object):
    FMT = {'b': '>b', 'B': '>B', 's': '>h', 'u': '>H', 'I': '>i', 'i': '>I',
           'l': '>q', 'f': '>f', 'd': '>d'}

    def __init__(self, tag, value):
        self.tag, self.value = tag, value


_orig_encode_value = pika.data.encode_value
_orig_decode_value = pika.data.decode_value


def _encode_value(pieces, value):
    if isinstance(value, Typed):
        data = struct.pack(Typed.FMT[value.tag], value.value)
        pieces.append(value.tag.encode() + data)
        return 1 + len(data)
    if isinstance(value, float):
        pieces.append(b'd' + struct.pack('>d', value))
        return 9
    return _orig_encode_value(pieces, value)


def _decode_value(encoded, offset):
    kind = encoded[offset:offset + 1]
    if kind == b'f':
        return struct.unpack_from('>f', encoded, offset + 1)[0], offset + 5
    if kind == b'd':
        return struct.unpack_from('>d', encoded, offset + 1)[0], offset + 9
    return _orig_decode_value(encoded, offset)


pika.data.encode_value = _encode_value
pika.data.decode_value = _decode_value

# ---------------------------------------------------------------------------
# helpers (copied from conformance.py, plus extension-specific ones below)
# ---------------------------------------------------------------------------


class CheckFail(Exception):
    pass


class CheckTimeout(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFail(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise CheckFail("%s: expected %r, got %r" % (what, expected, actual))


def _match_text(actual, text):
    if text is None:
        return True
    if hasattr(text, 'search'):
        return text.search(actual) is not None
    return actual == text


def expect_channel_error(fn, code, text=None):
    """fn() must raise ChannelClosedByBroker(code, text)."""
    try:
        fn()
    except ChannelClosedByBroker as e:
        if e.reply_code != code or not _match_text(e.reply_text, text):
            raise CheckFail("expected channel close %r %r, got %r %r" %
                            (code, getattr(text, 'pattern', text),
                             e.reply_code, e.reply_text))
        return e
    except ConnectionClosedByBroker as e:
        raise CheckFail("expected channel close %r, got CONNECTION close %r %r"
                        % (code, e.reply_code, e.reply_text))
    raise CheckFail("expected channel close %r %r, but no error" % (code, text))


def expect_connection_error(conn, fn, code, text=None):
    """fn() must raise ConnectionClosedByBroker(code, text) and conn be closed."""
    try:
        fn()
    except ConnectionClosedByBroker as e:
        if e.reply_code != code or not _match_text(e.reply_text, text):
            raise CheckFail("expected connection close %r %r, got %r %r" %
                            (code, getattr(text, 'pattern', text),
                             e.reply_code, e.reply_text))
        expect(conn.is_closed, "connection should be closed after %d" % code)
        return e
    except ChannelClosedByBroker as e:
        raise CheckFail("expected CONNECTION close %r, got channel close %r %r"
                        % (code, e.reply_code, e.reply_text))
    raise CheckFail("expected connection close %r %r, but no error"
                    % (code, text))


def barrier(ch):
    """Synchronous round trip on ch: surfaces errors from earlier async methods."""
    ch.exchange_declare('amq.direct', passive=True)


def pump(conn, pred, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        rem = deadline - time.monotonic()
        if rem <= 0:
            raise CheckFail("timed out waiting for %s"
                            % (what() if callable(what) else what))
        conn.process_data_events(time_limit=min(0.05, rem))


def settle(conn, window=NEGATIVE_WINDOW):
    """Process events for a bounded window (used to assert nothing more
    arrives, or to let a TTL run out)."""
    deadline = time.monotonic() + window
    while True:
        rem = deadline - time.monotonic()
        if rem <= 0:
            return
        conn.process_data_events(time_limit=min(0.05, rem))


def ready_count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def consumer_count(ch, q):
    return ch.queue_declare(q, passive=True).method.consumer_count


class Collector(object):
    """basic_consume callback recording deliveries."""

    def __init__(self):
        self.msgs = []

    def __call__(self, ch, method, props, body):
        self.msgs.append((method, props, body))

    @property
    def bodies(self):
        return [m[2] for m in self.msgs]


def get1(ch, q, auto_ack=True):
    """basic.get; returns (method, props, body) or None when empty."""
    m, p, b = ch.basic_get(q, auto_ack=auto_ack)
    return None if m is None else (m, p, b)


def wait_get(conn, ch, q, auto_ack=True, timeout=WAIT, what=None):
    """basic.get in a polling loop until a message arrives."""
    got = []

    def f():
        r = get1(ch, q, auto_ack)
        if r is not None:
            got.append(r)
        return bool(got)
    pump(conn, f, timeout, what or ("a message in %s" % q))
    return got[0]


def drain(ch, q):
    """basic.get (auto-ack) until empty; returns the bodies."""
    out = []
    while True:
        r = get1(ch, q)
        if r is None:
            return out
        out.append(r[2])


def P(**kw):
    return pika.BasicProperties(**kw)


def hdrs(props):
    return props.headers or {}


def routed(cch, q, body=b'probe'):
    """Mandatory publish to the default exchange on a confirm channel: True if
    q exists.  Publishing does NOT count as queue "use" for x-expires, unlike
    passive queue.declare and basic.get, so this probes without side effects
    on the lease (it does add a message to q)."""
    try:
        cch.basic_publish('', q, body, mandatory=True)
        return True
    except UnroutableError:
        return False


_NOW_SLACK = 120


def near_now(ts):
    """x-death 'time' is an AMQP timestamp (seconds); pika gives datetime."""
    if isinstance(ts, datetime.datetime):
        if ts.tzinfo is not None:
            ts = ts.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        return abs((now - ts).total_seconds()) < _NOW_SLACK
    return False


def xdeath(props):
    return hdrs(props).get('x-death')


def death_summary(props):
    """[(queue, reason, count, exchange, routing-keys)] in header order."""
    return [(d.get('queue'), d.get('reason'), d.get('count'), d.get('exchange'),
             d.get('routing-keys')) for d in (xdeath(props) or [])]


DEATH_KEYS = {'count', 'reason', 'queue', 'time', 'exchange', 'routing-keys'}

# ---------------------------------------------------------------------------
# broker version (some extension semantics changed after 3.10)
# ---------------------------------------------------------------------------

_SERVER_VERSION = [None]


def server_version(ctx):
    if _SERVER_VERSION[0] is None:
        c = ctx.connect()
        v = c._impl.server_properties.get('version', '0')
        if isinstance(v, bytes):
            v = v.decode()
        nums = re.findall(r'\d+', v)[:3]
        _SERVER_VERSION[0] = tuple(int(n) for n in nums) + (0,) * (3 - len(nums))
    return _SERVER_VERSION[0]


def at_least(ctx, *v):
    return server_version(ctx) >= tuple(v)


# ---------------------------------------------------------------------------
# context
# ---------------------------------------------------------------------------


class Ctx(object):
    def __init__(self, url):
        self.url = url
        self.params = pika.URLParameters(url)
        self.vhost = self.params.virtual_host
        self.user = self.params.credentials.username
        self.conns = []
        self.queues = []
        self.exchanges = []
        self.tag = "%d-%s" % (os.getpid(), uuid.uuid4().hex[:6])
        self.n = 0

    def _name(self, kind):
        self.n += 1
        return "pe-%s-%s-%d" % (kind, self.tag, self.n)

    def q(self):
        n = self._name('q')
        self.queues.append(n)
        return n

    def x(self):
        n = self._name('x')
        self.exchanges.append(n)
        return n

    def connect(self, url=None):
        p = pika.URLParameters(url or self.url)
        p.socket_timeout = 5
        p.stack_timeout = 8
        p.blocked_connection_timeout = 8
        c = pika.BlockingConnection(p)
        self.conns.append(c)
        return c

    def conn_ch(self):
        c = self.connect()
        return c, c.channel()

    def confirm_ch(self, c=None):
        c = c or self.connect()
        ch = c.channel()
        ch.confirm_delivery()
        return c, ch

    def vq(self, q):
        """RabbitMQ resource description for a queue."""
        return "queue '%s' in vhost '%s'" % (q, self.vhost)

    def vx(self, x):
        return "exchange '%s' in vhost '%s'" % (x, self.vhost)

    def cleanup(self):
        for c in self.conns:
            try:
                if c.is_open:
                    c.close()
            except Exception:
                pass
        self.conns = []
        if not (self.queues or self.exchanges):
            return
        try:
            p = pika.URLParameters(self.url)
            p.socket_timeout = 5
            p.stack_timeout = 5
            c = pika.BlockingConnection(p)
        except Exception:
            return
        try:
            ch = c.channel()
            for kind, names in (('q', self.queues), ('x', self.exchanges)):
                for n in names:
                    try:
                        if not ch.is_open:
                            ch = c.channel()
                        if kind == 'q':
                            ch.queue_delete(n)
                        else:
                            ch.exchange_delete(n)
                    except Exception:
                        pass
        finally:
            try:
                c.close()
            except Exception:
                pass
        self.queues, self.exchanges = [], []


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


# ---------------------------------------------------------------------------
# message TTL (x-message-ttl, expiration) and queue TTL (x-expires)
# ---------------------------------------------------------------------------


@check
def ttl_queue_message_ttl(ctx):
    c, ch = ctx.conn_ch()
    cch = c.channel()
    cch.confirm_delivery()   # publish returns once the queue has it
    q, q_long = ctx.q(), ctx.q()
    ch.queue_declare(q, arguments={'x-message-ttl': 100})
    ch.queue_declare(q_long, arguments={'x-message-ttl': 60000})
    for i in range(3):
        cch.basic_publish('', q, b'%d' % i)
        cch.basic_publish('', q_long, b'%d' % i)
    # expired messages are removed by the queue's own timer: the ready count
    # drops to 0 without anyone touching the queue
    pump(c, lambda: ready_count(ch, q) == 0, what="per-queue TTL expiry")
    eq(get1(ch, q), None, "expired message via basic.get")
    eq(drain(ch, q_long), [b'0', b'1', b'2'], "not-yet-expired messages")
    # NOTE: when both are set the lower of x-message-ttl and expiration wins
    q2 = ctx.q()
    ch.queue_declare(q2, arguments={'x-message-ttl': 50})
    cch.basic_publish('', q2, b'a', P(expiration='60000'))
    q3 = ctx.q()
    ch.queue_declare(q3, arguments={'x-message-ttl': 60000})
    cch.basic_publish('', q3, b'b', P(expiration='50'))
    pump(c, lambda: ready_count(ch, q2) == 0 and ready_count(ch, q3) == 0,
         what="min(queue TTL, message TTL) expiry")


@check
def ttl_per_message_expiration(ctx):
    c, ch = ctx.conn_ch()
    cch = c.channel()
    cch.confirm_delivery()   # publish returns once the queue has it
    q = ctx.q()
    ch.queue_declare(q)
    cch.basic_publish('', q, b'short', P(expiration='60'))
    pump(c, lambda: ready_count(ch, q) == 0,
         what="per-message TTL expiry of the head message")
    ch.basic_publish('', q, b'long', P(expiration='60000'))
    m = wait_get(c, ch, q)
    eq(m[2], b'long', "body")
    # the expiration property is delivered unchanged
    eq(m[1].expiration, '60000', "expiration property on delivery")


@check
def ttl_per_message_only_at_head(ctx):
    # NOTE: per-message TTL is enforced only at the HEAD of a classic queue.
    # An expired message behind a non-expiring one stays in the queue (and in
    # message_count, and is not dead-lettered) until it reaches the head; it
    # is never delivered.  (rabbitmq.com/docs/ttl "Per-message TTL applied
    # retroactively", and docs/priority: "messages are only expired when they
    # reach the head of the queue" -- unchanged in 4.x for classic queues.)
    c, ch = ctx.conn_ch()
    dlx, dlq, q = ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(dlx, exchange_type='fanout')
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={'x-dead-letter-exchange': dlx})
    ch.basic_publish('', q, b'A')
    ch.basic_publish('', q, b'B', P(expiration='30'))
    ch.basic_publish('', q, b'C')
    pump(c, lambda: ready_count(ch, q) == 3, what="3 messages")
    settle(c, 0.25)            # B's TTL runs out behind A
    eq(ready_count(ch, q), 3, "expired B still counted while behind A")
    eq(ready_count(ch, dlq), 0, "B not dead-lettered while behind A")
    eq(get1(ch, q)[2], b'A', "head")
    # once A is gone B is at the head: it is dropped/dead-lettered, never
    # delivered, and C comes next
    eq(get1(ch, q)[2], b'C', "expired B skipped")
    eq(ready_count(ch, q), 0, "queue empty")
    d = wait_get(c, ch, dlq)
    eq(d[2], b'B', "B dead-lettered once at the head")
    eq(death_summary(d[1])[0][:2], (q, 'expired'), "reason")
    # consumers never see expired messages either
    ch.basic_publish('', q, b'D')
    ch.basic_publish('', q, b'E', P(expiration='30'))
    ch.basic_publish('', q, b'F')
    pump(c, lambda: ready_count(ch, q) == 3, what="3 more messages")
    settle(c, 0.2)
    col = Collector()
    ch.basic_consume(q, col, auto_ack=True)
    pump(c, lambda: len(col.msgs) >= 2, what="deliveries")
    settle(c)
    eq(col.bodies, [b'D', b'F'], "consumer skips the expired message")
    pump(c, lambda: ready_count(ch, dlq) == 1, what="E dead-lettered")


@check
def ttl_zero_queue(ctx):
    # x-message-ttl 0: a message expires at once unless it can be delivered
    # immediately to a consumer (the docs' replacement for immediate=true;
    # no basic.return is sent, expired messages are dead-lettered)
    c, ch = ctx.conn_ch()
    dlx, dlq, q = ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(dlx, exchange_type='fanout')
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={'x-message-ttl': 0,
                                   'x-dead-letter-exchange': dlx})
    ch.basic_publish('', q, b'nobody-home')
    d = wait_get(c, ch, dlq, what="ttl-0 message dead-lettered")
    eq(d[2], b'nobody-home', "body")
    eq(death_summary(d[1])[0][:3], (q, 'expired', 1), "x-death")
    eq(ready_count(ch, q), 0, "nothing stays in the ttl-0 queue")
    # with a consumer that has capacity the message is delivered
    c2 = ctx.connect()
    ch2 = c2.channel()
    ch2.basic_qos(prefetch_count=1)
    col = Collector()
    ch2.basic_consume(q, col)
    ch.basic_publish('', q, b'delivered')
    pump(c2, lambda: len(col.msgs) == 1, what="immediate delivery")
    eq(col.bodies, [b'delivered'], "delivered body")
    # the consumer is now blocked by prefetch: the next message expires
    ch.basic_publish('', q, b'blocked')
    d = wait_get(c, ch, dlq, what="message expired while consumer blocked")
    eq(d[2], b'blocked', "expired while the only consumer was at its prefetch")
    settle(c2)
    eq(len(col.msgs), 1, "blocked consumer got nothing more")


@check
def ttl_zero_per_message(ctx):
    c, ch = ctx.conn_ch()
    cch = c.channel()
    cch.confirm_delivery()   # publish returns once the queue has it
    q = ctx.q()
    ch.queue_declare(q)
    cch.basic_publish('', q, b'gone', P(expiration='0'))
    pump(c, lambda: ready_count(ch, q) == 0, what="expiration 0 dropped")
    eq(get1(ch, q), None, "expiration 0 not retrievable")
    col = Collector()
    ch.basic_consume(q, col, auto_ack=True)
    ch.basic_publish('', q, b'now', P(expiration='0'))
    pump(c, lambda: col.msgs, what="expiration 0 delivered to waiting consumer")
    eq(col.bodies, [b'now'], "body")
    eq(col.msgs[0][1].expiration, '0', "expiration property kept on delivery")


@check
def ttl_requeue_keeps_original_expiry(ctx):
    # the original expiry is preserved on requeue: a message that expired
    # while unacked is dead-lettered (not redelivered) when it is requeued
    c, ch = ctx.conn_ch()
    dlx, dlq, q = ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(dlx, exchange_type='fanout')
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={'x-message-ttl': 150,
                                   'x-dead-letter-exchange': dlx})
    ch.basic_publish('', q, b'm')
    m = wait_get(c, ch, q, auto_ack=False)
    settle(c, 0.35)           # the TTL runs out while the message is unacked
    eq(ready_count(ch, dlq), 0, "unacked messages do not expire")
    ch.basic_nack(m[0].delivery_tag, requeue=True)
    d = wait_get(c, ch, dlq, what="requeued expired message dead-lettered")
    eq(death_summary(d[1])[0][:2], (q, 'expired'), "reason")
    eq(get1(ch, q), None, "not redelivered")


@check
def ttl_expiration_property_validation(ctx):
    # the expiration property is parsed with Erlang string:to_integer/1:
    # a leading sign or zeros are fine, trailing garbage is not
    c = ctx.connect()
    q = ctx.q()
    c.channel().queue_declare(q)
    for exp in ('+5000', '05000'):
        ch = c.channel()
        ch.basic_publish('', q, b'ok', P(expiration=exp))
        barrier(ch)
    for exp, detail in (('5 ', '{leftover_string," "}'),
                        ('1e3', '{leftover_string,"e3"}'),
                        ('', 'no_integer'),
                        ('abc', 'no_integer'),
                        ('-1', '{value_negative,-1}'),
                        ('315360000001', '{value_too_large,315360000001}')):
        ch = c.channel()
        ch.basic_publish('', q, b'bad', P(expiration=exp))
        expect_channel_error(lambda: barrier(ch), 406,
                             "PRECONDITION_FAILED - invalid expiration '%s': %s"
                             % (exp, detail))
    ch = c.channel()
    pump(c, lambda: ready_count(ch, q) == 2, what="valid ones routed")
    settle(c, 0.1)
    eq(drain(ch, q), [b'ok', b'ok'], "only valid ones routed")


@check
def expires_unused_queue_deleted(ctx):
    # x-expires: deleted after being unused for the period.  NOTE: publishing
    # to the queue, and holding messages, is NOT use.
    c, cch = ctx.confirm_ch()
    ch = c.channel()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-expires': 300})
    t0 = time.monotonic()
    pump(c, lambda: not routed(cch, q), timeout=4,
         what="x-expires queue deleted although published to")
    took = time.monotonic() - t0
    expect(took >= 0.2, "queue expired too early (%.3fs < 300ms)" % took)
    expect_channel_error(lambda: ch.queue_declare(q, passive=True), 404,
                         "NOT_FOUND - no %s" % ctx.vq(q))


@check
def expires_consumer_keeps_alive(ctx):
    # a queue with a consumer never expires; the timer starts when the last
    # consumer goes away
    c, cch = ctx.confirm_ch()
    ch = c.channel()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-expires': 150})
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    settle(c, 0.5)
    expect(routed(cch, q), "queue with a consumer must not expire")
    ch.basic_cancel(tag)
    pump(c, lambda: not routed(cch, q), timeout=3,
         what="expiry after the last consumer was cancelled")


@check
def expires_get_and_declare_renew(ctx):
    # NOTE: basic.get (even on an empty queue) and queue.declare -- including
    # a PASSIVE declare -- renew the x-expires lease (rabbit_amqqueue_process
    # handle_call stat / basic_get -> ensure_expiry_timer; the same in 4.x).
    c, cch = ctx.confirm_ch()
    ch = c.channel()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-expires': 400})
    end = time.monotonic() + 0.9
    while time.monotonic() < end:
        ch.basic_get(q, auto_ack=True)
        settle(c, 0.08)
    end = time.monotonic() + 0.9
    while time.monotonic() < end:
        ch.queue_declare(q, passive=True)
        settle(c, 0.08)
    ch.queue_declare(q, arguments={'x-expires': 400})   # active redeclare
    expect(routed(cch, q), "queue kept alive by basic.get / queue.declare")
    pump(c, lambda: not routed(cch, q), timeout=3,
         what="expiry once nobody touches the queue")


@check
def expires_does_not_dead_letter(ctx):
    # messages of an expired (deleted) queue are NOT dead-lettered
    c, cch = ctx.confirm_ch()
    ch = c.channel()
    dlx, dlq, q = ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(dlx, exchange_type='fanout')
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={'x-expires': 150,
                                   'x-dead-letter-exchange': dlx})
    ch.basic_publish('', q, b'doomed')
    pump(c, lambda: not routed(cch, q), timeout=3, what="queue expiry")
    settle(c)
    eq(ready_count(ch, dlq), 0, "queue expiry dead-letters nothing")


# ---------------------------------------------------------------------------
# dead-lettering
# ---------------------------------------------------------------------------


def _dl_setup(ctx, ch, qargs=None, dlx_type='fanout', dlq_key=''):
    dlx, dlq, q = ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(dlx, exchange_type=dlx_type)
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, dlq_key)
    args = {'x-dead-letter-exchange': dlx}
    args.update(qargs or {})
    ch.queue_declare(q, arguments=args)
    return dlx, dlq, q


def _check_last_death(ctx, h, reason, queue, exchange):
    if at_least(ctx, 3, 13):
        # 4.x differs: since 3.13 (message containers, mc:record_death/3)
        # x-last-death-reason/-queue/-exchange are set on every dead-lettering
        # (rabbitmq.com/docs/dlx "Dead-Lettered Effects on Messages").
        eq((h.get('x-last-death-reason'), h.get('x-last-death-queue'),
            h.get('x-last-death-exchange')), (reason, queue, exchange),
           "x-last-death-*")
    else:
        # 3.10 sets only x-first-death-*
        for k in ('x-last-death-reason', 'x-last-death-queue',
                  'x-last-death-exchange'):
            expect(k not in h, "3.10 has no %s header" % k)


@check
def dlx_rejected_headers(ctx):
    c, ch = ctx.conn_ch()
    dlx, dlq, q = _dl_setup(ctx, ch)
    ch.basic_publish('', q, b'r1', P(headers={'app': 'v'}, message_id='m1',
                                     content_type='text/plain'))
    m = wait_get(c, ch, q, auto_ack=False)
    ch.basic_reject(m[0].delivery_tag, requeue=False)
    d = wait_get(c, ch, dlq, what="rejected message dead-lettered")
    meth, props, body = d
    eq(body, b'r1', "body")
    # the message is republished to the DLX with its original routing key
    eq((meth.exchange, meth.routing_key, meth.redelivered), (dlx, q, False),
       "deliver exchange/routing-key/redelivered")
    eq((props.message_id, props.content_type), ('m1', 'text/plain'),
       "other properties kept")
    h = hdrs(props)
    eq(h.get('app'), 'v', "application header kept")
    deaths = xdeath(props)
    eq(len(deaths), 1, "one x-death entry")
    e = deaths[0]
    eq(set(e), DEATH_KEYS, "x-death entry fields")
    eq((e['count'], e['reason'], e['queue'], e['exchange'], e['routing-keys']),
       (1, 'rejected', q, '', [q]), "x-death entry")
    expect(near_now(e['time']), "x-death time is a timestamp near now: %r"
           % (e['time'],))
    eq((h.get('x-first-death-reason'), h.get('x-first-death-queue'),
        h.get('x-first-death-exchange')), ('rejected', q, ''),
       "x-first-death-*")
    _check_last_death(ctx, h, 'rejected', q, '')
    # basic.nack(requeue=false), also with multiple=true, is 'rejected' too
    for b in (b'n1', b'n2', b'n3'):
        ch.basic_publish('', q, b)
    pump(c, lambda: ready_count(ch, q) == 3, what="3 messages")
    ms = [get1(ch, q, auto_ack=False) for _ in range(3)]
    ch.basic_nack(ms[0][0].delivery_tag, multiple=False, requeue=False)
    ch.basic_nack(ms[2][0].delivery_tag, multiple=True, requeue=False)
    pump(c, lambda: ready_count(ch, dlq) == 3, what="nacked dead-lettered")
    got = [get1(ch, dlq) for _ in range(3)]
    eq([g[2] for g in got], [b'n1', b'n2', b'n3'], "DLQ order")
    for g in got:
        eq(death_summary(g[1])[0][:3], (q, 'rejected', 1), "nack reason")
    # reject/nack with requeue=false and NO dead-letter exchange: dropped
    q2 = ctx.q()
    ch.queue_declare(q2)
    ch.basic_publish('', q2, b'x')
    m = wait_get(c, ch, q2, auto_ack=False)
    ch.basic_reject(m[0].delivery_tag, requeue=False)
    barrier(ch)
    eq(ready_count(ch, q2), 0, "rejected without DLX is discarded")


@check
def dlx_missing_exchange_drops(ctx):
    # the DLX need not exist at declare time; if it is missing when a message
    # is dead-lettered, the message is silently dropped (no error)
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-dead-letter-exchange': ctx.x()})
    ch.basic_publish('', q, b'x')
    m = wait_get(c, ch, q, auto_ack=False)
    ch.basic_reject(m[0].delivery_tag, requeue=False)
    barrier(ch)
    eq(ready_count(ch, q), 0, "dropped")
    expect(ch.is_open, "no channel error")


@check
def dlx_routing_keys_cc_bcc(ctx):
    c, ch = ctx.conn_ch()
    src = ctx.x()
    ch.exchange_declare(src, exchange_type='direct')
    # (a) no x-dead-letter-routing-key: dead-lettered with ALL original
    # routing keys, including the CC *and* BCC ones (docs/dlx "Routing")
    dlx, dlq_k1, q = _dl_setup(ctx, ch, dlx_type='direct', dlq_key='k1')
    dlq_cc, dlq_bcc = ctx.q(), ctx.q()
    for dq, k in ((dlq_cc, 'k2'), (dlq_bcc, 'k3')):
        ch.queue_declare(dq)
        ch.queue_bind(dq, dlx, k)
    for k in ('k1', 'k2', 'k3'):
        ch.queue_bind(q, src, k)
    ch.basic_publish(src, 'k1', b'm', P(headers={'CC': ['k2'], 'BCC': ['k3']}))
    m = wait_get(c, ch, q, auto_ack=False)
    h = hdrs(m[1])
    eq((h.get('CC'), 'BCC' in h), (['k2'], False), "CC kept, BCC stripped")
    ch.basic_reject(m[0].delivery_tag, requeue=False)
    got = {}
    for dq in (dlq_k1, dlq_cc, dlq_bcc):
        got[dq] = wait_get(c, ch, dq, what="dead-lettered copy in %s" % dq)
    meth, props, _ = got[dlq_k1]
    eq((meth.exchange, meth.routing_key), (dlx, 'k1'), "deliver rk")
    e = xdeath(props)[0]
    # x-death routing-keys: the original key plus CC, never BCC
    eq((e['exchange'], e['routing-keys']), (src, ['k1', 'k2']),
       "x-death exchange/routing-keys")
    eq((hdrs(props).get('CC'), 'BCC' in hdrs(props)), (['k2'], False),
       "CC header after dead-lettering without a DL routing key")
    # (b) with x-dead-letter-routing-key: only that key is used
    dlx2, dlq2, q2 = _dl_setup(ctx, ch, {'x-dead-letter-routing-key': 'dlk'},
                               dlx_type='direct', dlq_key='dlk')
    other = ctx.q()
    ch.queue_declare(other)
    ch.queue_bind(other, dlx2, 'k2')
    ch.queue_bind(q2, src, 'j1')
    ch.basic_publish(src, 'j1', b'n', P(headers={'CC': ['k2'], 'BCC': ['k3']}))
    m = wait_get(c, ch, q2, auto_ack=False)
    ch.basic_reject(m[0].delivery_tag, requeue=False)
    meth, props, _ = wait_get(c, ch, dlq2, what="dead-lettered with DL rk")
    eq((meth.exchange, meth.routing_key), (dlx2, 'dlk'), "deliver rk = DL rk")
    e = xdeath(props)[0]
    eq((e['exchange'], e['routing-keys']), (src, ['j1', 'k2']),
       "x-death records the ORIGINAL routing keys")
    settle(c)
    eq(ready_count(ch, other), 0, "CC key not used when a DL rk is set")
    if at_least(ctx, 3, 13):
        # 4.x differs: the CC header is NOT removed any more when a
        # dead-letter routing key replaces the routing key (rabbit_dead_letter
        # / mc.erl since 3.13 "Message Containers" #5077 dropped the
        # keydelete(<<"CC">>) that 3.x did; docs/dlx still claims removal).
        eq(hdrs(props).get('CC'), ['k2'], "CC header kept (3.13+/4.x)")
    else:
        # 3.10: "if the routing key is replaced, the CC header is removed"
        expect('CC' not in hdrs(props), "CC header removed with a DL rk")
    expect('BCC' not in hdrs(props), "no BCC")


@check
def dlx_expired_headers(ctx):
    c, ch = ctx.conn_ch()
    dlx, dlq, q = _dl_setup(ctx, ch)
    # per-message TTL: original-expiration recorded, expiration removed
    ch.basic_publish('', q, b'pm', P(expiration='40', headers={'a': 1}))
    meth, props, body = wait_get(c, ch, dlq, what="expired message")
    eq(body, b'pm', "body")
    eq(props.expiration, None, "expiration property removed on dead-lettering")
    e = xdeath(props)[0]
    eq(set(e), DEATH_KEYS | {'original-expiration'}, "x-death fields")
    eq((e['count'], e['reason'], e['queue'], e['exchange'], e['routing-keys'],
        e['original-expiration']), (1, 'expired', q, '', [q], '40'),
       "x-death entry")
    h = hdrs(props)
    eq((h.get('x-first-death-reason'), h.get('x-first-death-queue'),
        h.get('x-first-death-exchange')), ('expired', q, ''), "x-first-death-*")
    _check_last_death(ctx, h, 'expired', q, '')
    # per-queue TTL: no original-expiration
    dlx2, dlq2, q2 = _dl_setup(ctx, ch, {'x-message-ttl': 40})
    ch.basic_publish('', q2, b'pq')
    meth, props, body = wait_get(c, ch, dlq2, what="queue-TTL expired message")
    e = xdeath(props)[0]
    eq(set(e), DEATH_KEYS, "no original-expiration for queue TTL")
    eq(e['reason'], 'expired', "reason")
    eq(props.expiration, None, "no expiration")


@check
def dlx_maxlen_headers(ctx):
    c, ch = ctx.conn_ch()
    dlx, dlq, q = _dl_setup(ctx, ch, {'x-max-length': 1})
    ch.basic_publish('', q, b'old')
    ch.basic_publish('', q, b'new')
    meth, props, body = wait_get(c, ch, dlq, what="maxlen dead-letter")
    eq(body, b'old', "drop-head dead-letters the OLDEST message")
    eq(death_summary(props), [(q, 'maxlen', 1, '', [q])], "x-death")
    _check_last_death(ctx, hdrs(props), 'maxlen', q, '')
    eq(drain(ch, q), [b'new'], "queue keeps the newest")


@check
def dlx_client_supplied_xdeath(ctx):
    # A message PUBLISHED with an x-death header (e.g. a consumer copied it
    # and re-published it), then dead-lettered.
    c, ch = ctx.conn_ch()
    dlx, dlq, q = _dl_setup(ctx, ch)
    fake = [{'count': 5, 'reason': 'rejected', 'queue': q,
             'time': datetime.datetime(2020, 1, 1), 'exchange': '',
             'routing-keys': [q]}]
    ch.basic_publish('', q, b'again', P(headers={'x-death': fake}))
    m = wait_get(c, ch, q, auto_ack=False)
    eq(death_summary(m[1]), [(q, 'rejected', 5, '', [q])],
       "client header delivered unchanged")
    ch.basic_reject(m[0].delivery_tag, requeue=False)
    meth, props, body = wait_get(c, ch, dlq)
    h = hdrs(props)
    if at_least(ctx, 4, 0):
        # 4.x differs: RabbitMQ 4.x no longer interprets an x-death header
        # that a client (re-)publishes: dead-lettering starts a fresh history
        # (count 1) and the x-first-death-* headers are set
        # (release-notes/4.0.1.md "AMQP 0.9.1 x-death header").
        eq(death_summary(props), [(q, 'rejected', 1, '', [q])], "x-death")
        eq(h.get('x-first-death-queue'), q, "x-first-death-queue")
    else:
        # 3.10 (and 3.13) parse the published header: the {queue, reason}
        # entry's count is incremented, and because an x-death header already
        # existed, NO x-first-death-* headers are added.
        eq(death_summary(props), [(q, 'rejected', 6, '', [q])],
           "x-death count continued from the client's header")
        expect('x-first-death-queue' not in h, "no x-first-death-* added")


@check
def dlx_count_and_order_through_cycle(ctx):
    # A --reject--> B --expire--> A --reject--> B --expire--> A ...
    # A cycle that contains a rejection is NOT dropped; each (queue, reason)
    # pair has ONE x-death entry whose count increments and which moves to
    # the front (most recent first).  exchange/routing-keys/time of an entry
    # stay those of its FIRST occurrence.
    c, ch = ctx.conn_ch()
    a, b = ctx.q(), ctx.q()
    ch.queue_declare(a, arguments={'x-dead-letter-exchange': '',
                                   'x-dead-letter-routing-key': b})
    ch.queue_declare(b, arguments={'x-dead-letter-exchange': '',
                                   'x-dead-letter-routing-key': a,
                                   'x-message-ttl': 30})
    ch.basic_publish('', a, b'm')
    expected = []
    for rnd in (1, 2):
        m = wait_get(c, ch, a, auto_ack=False, what="round %d in A" % rnd)
        eq(death_summary(m[1]), expected, "x-death before reject %d" % rnd)
        if rnd == 2:
            eq((m[0].exchange, m[0].routing_key), ('', a), "deliver via DLX ''")
        ch.basic_reject(m[0].delivery_tag, requeue=False)
        expected = [(b, 'expired', rnd, '', [b]), (a, 'rejected', rnd, '', [a])]
    m = wait_get(c, ch, a, auto_ack=False, what="round 3 in A")
    eq(death_summary(m[1]), expected, "x-death after two cycles")
    h = hdrs(m[1])
    eq((h.get('x-first-death-reason'), h.get('x-first-death-queue')),
       ('rejected', a), "x-first-death-* never change")
    _check_last_death(ctx, h, 'expired', b, '')
    ch.basic_ack(m[0].delivery_tag)


@check
def dlx_count_same_queue_rejected_twice(ctx):
    # queue dead-letters to itself (DLX '' + its own name): rejections are
    # never a cycle; count goes 1, 2, 3 on one entry
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-dead-letter-exchange': '',
                                   'x-dead-letter-routing-key': q})
    ch.basic_publish('', q, b'loop')
    for n in (1, 2, 3):
        m = wait_get(c, ch, q, auto_ack=False)
        if n > 1:
            eq(death_summary(m[1]), [(q, 'rejected', n - 1, '', [q])],
               "x-death after %d rejections" % (n - 1))
            eq(m[0].redelivered, False, "a dead-lettered copy is a new message")
        ch.basic_reject(m[0].delivery_tag, requeue=False)
    m = wait_get(c, ch, q)
    eq(death_summary(m[1]), [(q, 'rejected', 3, '', [q])], "count 3")


@check
def dlx_cycle_dropped(ctx):
    # A fully automatic dead-letter cycle (no 'rejected' in it) is detected
    # when the message would re-enter a queue already in its x-death: the
    # message is dropped for THAT queue only (other targets still get it).
    c, ch = ctx.conn_ch()
    # (1) A (ttl) -> fanout DLX bound to A and to an observer O
    fx, a, o = ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(fx, exchange_type='fanout')
    ch.queue_declare(a, arguments={'x-message-ttl': 30,
                                   'x-dead-letter-exchange': fx})
    ch.queue_declare(o)
    ch.queue_bind(a, fx)
    ch.queue_bind(o, fx)
    ch.basic_publish('', a, b'c1')
    d = wait_get(c, ch, o, what="observer copy")
    eq(death_summary(d[1]), [(a, 'expired', 1, '', [a])], "observer x-death")
    settle(c)
    eq(ready_count(ch, a), 0, "not re-enqueued in A (cycle A->A dropped)")
    eq(ready_count(ch, o), 0, "observer got exactly one copy")
    # (2) the docs' example: DLX '' without a DL routing key -> same queue
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-message-ttl': 30,
                                   'x-dead-letter-exchange': ''})
    ch.basic_publish('', q, b'c2')
    pump(c, lambda: ready_count(ch, q) == 0, what="expiry")
    settle(c)
    eq(ready_count(ch, q), 0, "dropped after ONE expiry")
    # (3) two queues: A (ttl) -> B (ttl) -> back to A is dropped; B's DLX is a
    # fanout to A and observer O2, so we can see the second hop happened
    a2, b2, o2, fx2 = ctx.q(), ctx.q(), ctx.q(), ctx.x()
    ch.exchange_declare(fx2, exchange_type='fanout')
    ch.queue_declare(o2)
    ch.queue_declare(a2, arguments={'x-message-ttl': 30,
                                    'x-dead-letter-exchange': '',
                                    'x-dead-letter-routing-key': b2})
    ch.queue_declare(b2, arguments={'x-message-ttl': 30,
                                    'x-dead-letter-exchange': fx2})
    ch.queue_bind(a2, fx2)
    ch.queue_bind(o2, fx2)
    ch.basic_publish('', a2, b'c3')
    d = wait_get(c, ch, o2, what="second-hop observer copy")
    eq(death_summary(d[1]), [(b2, 'expired', 1, '', [b2]),
                             (a2, 'expired', 1, '', [a2])], "two-hop x-death")
    settle(c)
    eq((ready_count(ch, a2), ready_count(ch, b2)), (0, 0),
       "A->B->A cycle dropped at A")


# ---------------------------------------------------------------------------
# queue length limits and overflow
# ---------------------------------------------------------------------------


@check
def maxlen_drop_head(ctx):
    c, ch = ctx.conn_ch()
    cch = c.channel()
    cch.confirm_delivery()   # publish returns once the queue has it
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-max-length': 2})
    for i in range(5):
        cch.basic_publish('', q, b'%d' % i)
    pump(c, lambda: ready_count(ch, q) == 2, what="2 ready")
    eq(drain(ch, q), [b'3', b'4'], "oldest dropped (drop-head default)")
    # only READY messages count: unacked deliveries do not
    ch.basic_publish('', q, b'u')
    m = wait_get(c, ch, q, auto_ack=False)
    for i in range(3):
        cch.basic_publish('', q, b'r%d' % i)
    pump(c, lambda: ready_count(ch, q) == 2, what="2 ready besides 1 unacked")
    eq(drain(ch, q), [b'r1', b'r2'], "limit applies to ready messages")
    ch.basic_ack(m[0].delivery_tag)
    # x-max-length 0 is valid: every message is dropped at once
    q0 = ctx.q()
    ch.queue_declare(q0, arguments={'x-max-length': 0})
    cch.basic_publish('', q0, b'z')
    eq(ready_count(ch, q0), 0, "max-length 0 keeps nothing")


@check
def maxlen_requeue_over_limit(ctx):
    # NOTE: a requeued message goes back to the HEAD; with drop-head the
    # length check that follows the requeue drops (dead-letters, reason
    # maxlen) exactly that requeued message.  With reject-publish a requeue
    # is never refused, so the queue may exceed its limit.
    c, ch = ctx.conn_ch()
    dlx, dlq, q = _dl_setup(ctx, ch, {'x-max-length': 1})
    ch.basic_publish('', q, b'm1')
    m = wait_get(c, ch, q, auto_ack=False)
    ch.basic_publish('', q, b'm2')
    barrier(ch)
    pump(c, lambda: ready_count(ch, q) == 1, what="m2 ready")
    ch.basic_nack(m[0].delivery_tag, requeue=True)
    d = wait_get(c, ch, dlq, what="requeued head dropped")
    eq((d[2], death_summary(d[1])[0][:2]), (b'm1', (q, 'maxlen')),
       "the requeued message is the one dropped")
    eq(drain(ch, q), [b'm2'], "m2 kept")
    q2 = ctx.q()
    ch.queue_declare(q2, arguments={'x-max-length': 1,
                                    'x-overflow': 'reject-publish'})
    ch.basic_publish('', q2, b'm1')
    m = wait_get(c, ch, q2, auto_ack=False)
    ch.basic_publish('', q2, b'm2')
    barrier(ch)
    pump(c, lambda: ready_count(ch, q2) == 1, what="m2 ready")
    ch.basic_nack(m[0].delivery_tag, requeue=True)
    pump(c, lambda: ready_count(ch, q2) == 2, what="requeue over the limit")
    eq(drain(ch, q2), [b'm1', b'm2'], "both kept, requeued first")


@check
def maxlen_bytes(ctx):
    # x-max-length-bytes counts message BODY bytes only (not properties)
    c, ch = ctx.conn_ch()
    cch = c.channel()
    cch.confirm_delivery()   # publish returns once the queue has it
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-max-length-bytes': 10})
    big_headers = P(headers={'pad': 'x' * 500})
    cch.basic_publish('', q, b'aaaaa', big_headers)
    cch.basic_publish('', q, b'bbbbb', big_headers)
    pump(c, lambda: ready_count(ch, q) == 2, what="10 bytes fit")
    cch.basic_publish('', q, b'c')
    pump(c, lambda: ready_count(ch, q) == 2, what="head dropped")
    eq(drain(ch, q), [b'bbbbb', b'c'], "oldest dropped to get under 10 bytes")
    # a single message larger than the limit is dropped itself
    cch.basic_publish('', q, b'x' * 11)
    eq(ready_count(ch, q), 0, "message over the byte limit dropped")
    # both limits: whichever is hit first
    q2 = ctx.q()
    ch.queue_declare(q2, arguments={'x-max-length-bytes': 100,
                                    'x-max-length': 2})
    for b in (b'1', b'2', b'3'):
        cch.basic_publish('', q2, b)
    pump(c, lambda: ready_count(ch, q2) == 2, what="count limit first")
    eq(drain(ch, q2), [b'2', b'3'], "count limit applied")


@check
def maxlen_reject_publish(ctx):
    c, cch = ctx.confirm_ch()
    ch = c.channel()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-max-length': 1,
                                   'x-overflow': 'reject-publish'})
    cch.basic_publish('', q, b'first')
    try:
        cch.basic_publish('', q, b'second')
        raise CheckFail("publish into a full reject-publish queue was acked")
    except NackError:
        pass
    eq(drain(ch, q), [b'first'], "newest rejected, queue keeps the first")
    # routed to several queues, rejected by one: nack, but the others get it
    fx, ok_q = ctx.x(), ctx.q()
    ch.exchange_declare(fx, exchange_type='fanout')
    ch.queue_declare(ok_q)
    ch.queue_bind(q, fx)
    ch.queue_bind(ok_q, fx)
    cch.basic_publish(fx, '', b'f1')
    try:
        cch.basic_publish(fx, '', b'f2')
        raise CheckFail("publish routed to a full reject-publish queue acked")
    except NackError:
        pass
    eq(drain(ch, ok_q), [b'f1', b'f2'], "other queue got both")
    eq(drain(ch, q), [b'f1'], "full queue got only the first")
    # without confirms a rejected publish is silently dropped
    ch.basic_publish('', q, b'g1')
    ch.basic_publish('', q, b'g2')
    barrier(ch)
    expect(ch.is_open, "no channel error without confirms")
    eq(drain(ch, q), [b'g1'], "silently dropped")
    # NOTE: a full reject-publish queue does NOT dead-letter the rejected
    # message even if it has a DLX (that is what reject-publish-dlx is for)
    dlx, dlq, q3 = _dl_setup(ctx, ch, {'x-max-length': 1,
                                       'x-overflow': 'reject-publish'})
    cch.basic_publish('', q3, b'h1')
    try:
        cch.basic_publish('', q3, b'h2')
        raise CheckFail("expected nack")
    except NackError:
        pass
    settle(c)
    eq(ready_count(ch, dlq), 0, "reject-publish does not dead-letter")


@check
def maxlen_reject_publish_dlx(ctx):
    c, cch = ctx.confirm_ch()
    ch = c.channel()
    dlx, dlq, q = _dl_setup(ctx, ch, {'x-max-length': 1,
                                      'x-overflow': 'reject-publish-dlx'})
    cch.basic_publish('', q, b'first')
    try:
        cch.basic_publish('', q, b'second', P(expiration='60000'))
        raise CheckFail("publish into a full reject-publish-dlx queue acked")
    except NackError:
        pass
    meth, props, body = wait_get(c, ch, dlq, what="rejected publish DL'd")
    eq(body, b'second', "the REJECTED (newest) message is dead-lettered")
    e = xdeath(props)[0]
    eq((e['count'], e['reason'], e['queue'], e['exchange'], e['routing-keys'],
        e.get('original-expiration')), (1, 'maxlen', q, '', [q], '60000'),
       "x-death reason maxlen")
    eq(props.expiration, None, "expiration removed")
    eq(drain(ch, q), [b'first'], "queue kept the first")


# ---------------------------------------------------------------------------
# priority queues
# ---------------------------------------------------------------------------


@check
def priority_queue_order(ctx):
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-max-priority': 5})
    msgs = [(b'a', None), (b'b', 1), (b'c', 5), (b'd', 1), (b'e', 9),
            (b'f', 0), (b'g', 5), (b'h', 3)]
    for body, prio in msgs:
        ch.basic_publish('', q, body, P(priority=prio))
    pump(c, lambda: ready_count(ch, q) == len(msgs), what="all enqueued")
    got = []
    for _ in msgs:
        m, p, b = get1(ch, q)
        got.append((b, p.priority))
    # higher first; equal priority FIFO; priority above the max (9) counts as
    # the max (5) and keeps FIFO among the 5s; no priority == 0; the property
    # itself is delivered unchanged
    eq(got, [(b'c', 5), (b'e', 9), (b'g', 5), (b'h', 3), (b'b', 1), (b'd', 1),
             (b'a', None), (b'f', 0)], "priority delivery order")
    # the same order to a consumer (messages already queued)
    for body, prio in msgs:
        ch.basic_publish('', q, body, P(priority=prio))
    pump(c, lambda: ready_count(ch, q) == len(msgs), what="all enqueued")
    col = Collector()
    ch.basic_consume(q, col, auto_ack=True)
    pump(c, lambda: len(col.msgs) == len(msgs), what="consumed")
    eq(col.bodies, [b'c', b'e', b'g', b'h', b'b', b'd', b'a', b'f'],
       "consumer order")


@check
def priority_ignored_without_max_priority(ctx):
    # a queue without x-max-priority, or with x-max-priority 0, is plain FIFO
    c, ch = ctx.conn_ch()
    for args in ({}, {'x-max-priority': 0}):
        q = ctx.q()
        ch.queue_declare(q, arguments=args)
        for body, prio in ((b'1', 0), (b'2', 9), (b'3', 5)):
            ch.basic_publish('', q, body, P(priority=prio))
        pump(c, lambda: ready_count(ch, q) == 3, what="3")
        expected = [b'1', b'2', b'3']
        if args and at_least(ctx, 4, 0):
            # 4.x differs: rabbit_priority_queue:priorities/1 clamps the maximum
            # with max(1, ...), so x-max-priority 0 runs as 1 (two levels);
            # 3.10 took it literally (one level, plain FIFO).
            expected = [b'2', b'3', b'1']
        eq(drain(ch, q), expected, "FIFO with %r" % (args,))
    # x-max-priority 1: two levels, 9 -> 1
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-max-priority': 1})
    for body, prio in ((b'1', 0), (b'2', 9), (b'3', 1), (b'4', None)):
        ch.basic_publish('', q, body, P(priority=prio))
    pump(c, lambda: ready_count(ch, q) == 4, what="4")
    eq(drain(ch, q), [b'2', b'3', b'1', b'4'], "two priority levels")


# ---------------------------------------------------------------------------
# single active consumer, consumer priorities
# ---------------------------------------------------------------------------


@check
def sac_single_active_consumer(ctx):
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-single-active-consumer': True})
    chans, cols, tags = [], [], []
    for i in range(3):
        cc = ctx.connect()
        cch = cc.channel()
        cch.basic_qos(prefetch_count=10)
        col = Collector()
        tags.append(cch.basic_consume(q, col))
        chans.append((cc, cch))
        cols.append(col)
    eq(consumer_count(ch, q), 3, "all consumers are registered")
    for i in range(4):
        ch.basic_publish('', q, b'a%d' % i)
    pump(chans[0][0], lambda: len(cols[0].msgs) == 4, what="active gets all")
    for cc, _ in chans[1:]:
        settle(cc, 0.1)
    eq([len(x.msgs) for x in cols], [4, 0, 0], "only the first is active")
    # cancel the active consumer: its 4 deliveries stay UNACKED on its
    # channel (basic.cancel does not requeue); the next consumer in
    # registration order takes over for new messages
    chans[0][1].basic_cancel(tags[0])
    for i in range(2):
        ch.basic_publish('', q, b'b%d' % i)
    pump(chans[1][0], lambda: len(cols[1].msgs) == 2, what="fail-over")
    eq(cols[1].bodies, [b'b0', b'b1'], "new active consumer gets new messages")
    settle(chans[2][0], 0.1)
    eq(len(cols[2].msgs), 0, "third consumer still idle")
    eq(ready_count(ch, q), 0, "old unacked not requeued by cancel")
    # the cancelled consumer can still ack its deliveries
    chans[0][1].basic_ack(cols[0].msgs[0][0].delivery_tag)
    # when its channel closes the remaining 3 are requeued and go to the
    # (new) active consumer, redelivered
    chans[0][1].close()
    pump(chans[1][0], lambda: len(cols[1].msgs) == 5, what="requeued to active")
    eq([(m[2], m[0].redelivered) for m in cols[1].msgs[2:]],
       [(b'a1', True), (b'a2', True), (b'a3', True)], "requeued unacked")
    # closing the active consumer's connection fails over to the third
    chans[1][0].close()
    pump(chans[2][0], lambda: len(cols[2].msgs) == 5,
         what="fail-over on connection close")
    eq(sorted(cols[2].bodies), [b'a1', b'a2', b'a3', b'b0', b'b1'],
       "unacked of the closed consumer requeued to the next")


@check
def sac_exclusive_consume_refused(ctx):
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-single-active-consumer': True})
    expect_channel_error(
        lambda: ch.basic_consume(q, lambda *a: None, exclusive=True), 403,
        "ACCESS_REFUSED - queue '%s' in vhost '%s' in exclusive use"
        % (q, ctx.vhost))


@check
def consumer_priority(ctx):
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q)
    lo_c, hi_c = ctx.connect(), ctx.connect()
    lo_ch, hi_ch = lo_c.channel(), hi_c.channel()
    lo_ch.basic_qos(prefetch_count=10)
    hi_ch.basic_qos(prefetch_count=2)
    lo, hi = Collector(), Collector()
    lo_ch.basic_consume(q, lo, arguments={'x-priority': 1})
    hi_ch.basic_consume(q, hi, arguments={'x-priority': 10})
    for i in range(5):
        ch.basic_publish('', q, b'%d' % i)
    pump(lo_c, lambda: len(lo.msgs) == 3, what="low-priority overflow")
    pump(hi_c, lambda: len(hi.msgs) == 2, what="high-priority deliveries")
    # the high-priority consumer gets everything until blocked by prefetch
    eq(hi.bodies, [b'0', b'1'], "high priority first")
    eq(lo.bodies, [b'2', b'3', b'4'], "low priority only when high is blocked")
    # acking on the high-priority consumer unblocks it: new messages go there
    hi_ch.basic_ack(hi.msgs[1][0].delivery_tag, multiple=True)
    # The ack and the next publish travel on different connections, so nothing
    # orders them at the queue. A passive declare on the acking channel reaches
    # the queue after the ack (same channel, same queue) and waits for its
    # reply, so the queue has applied the ack before the publish is sent.
    hi_ch.queue_declare(q, passive=True)
    ch.basic_publish('', q, b'5')
    pump(hi_c, lambda: len(hi.msgs) == 3, what="high again")
    settle(lo_c, 0.1)
    eq(len(lo.msgs), 3, "low got nothing more")
    # default priority is 0; negative priorities are allowed and lower
    q2 = ctx.q()
    ch.queue_declare(q2)
    neg, dflt = Collector(), Collector()
    lo_ch.basic_consume(q2, neg, auto_ack=True, arguments={'x-priority': -5})
    hi_ch.basic_consume(q2, dflt, auto_ack=True)
    for i in range(3):
        ch.basic_publish('', q2, b'%d' % i)
    pump(hi_c, lambda: len(dflt.msgs) == 3, what="default-priority consumer")
    settle(lo_c, 0.1)
    eq(len(neg.msgs), 0, "x-priority -5 consumer idle while priority 0 is free")


# ---------------------------------------------------------------------------
# alternate exchanges, exchange-to-exchange bindings, CC/BCC
# ---------------------------------------------------------------------------


@check
def ae_unroutable_and_mandatory(ctx):
    c, cch = ctx.confirm_ch()
    ch = c.channel()
    x, ae, q_main, q_ae = ctx.x(), ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(ae, exchange_type='fanout')
    ch.exchange_declare(x, exchange_type='direct',
                        arguments={'alternate-exchange': ae})
    for qq in (q_main, q_ae):
        ch.queue_declare(qq)
    ch.queue_bind(q_main, x, 'k')
    ch.queue_bind(q_ae, ae)
    # mandatory + unroutable on x but routed by the AE: no basic.return
    cch.basic_publish(x, 'k', b'routed', mandatory=True)
    cch.basic_publish(x, 'other', b'to-ae', P(headers={'h': 1}),
                      mandatory=True)
    eq(drain(ch, q_main), [b'routed'], "routable message")
    m = wait_get(c, ch, q_ae)
    # the message is otherwise unchanged: exchange/routing key of the
    # ORIGINAL publish, headers kept
    eq((m[2], m[0].exchange, m[0].routing_key, hdrs(m[1]).get('h')),
       (b'to-ae', x, 'other', 1), "AE delivery")
    eq(get1(ch, q_ae), None, "only one copy")
    # AE that cannot route either: basic.return 312 NO_ROUTE
    x2, ae2 = ctx.x(), ctx.x()
    ch.exchange_declare(ae2, exchange_type='fanout')
    ch.exchange_declare(x2, exchange_type='direct',
                        arguments={'alternate-exchange': ae2})
    try:
        cch.basic_publish(x2, 'k', b'lost', mandatory=True)
        raise CheckFail("expected basic.return when the AE routes nowhere")
    except UnroutableError as e:
        eq((e.messages[0].method.reply_code, e.messages[0].method.reply_text),
           (312, 'NO_ROUTE'), "return")
    # AE that does not exist: like no AE (returned when mandatory, no error)
    x3 = ctx.x()
    ch.exchange_declare(x3, exchange_type='direct',
                        arguments={'alternate-exchange': ctx.x()})
    try:
        cch.basic_publish(x3, 'k', b'lost', mandatory=True)
        raise CheckFail("expected basic.return when the AE is missing")
    except UnroutableError:
        pass
    expect(cch.is_open, "missing AE is not an error")
    # chain: x4 -> ae4a (no bindings, has its own AE) -> ae4b -> queue
    x4, ae4a, ae4b, q4 = ctx.x(), ctx.x(), ctx.x(), ctx.q()
    ch.exchange_declare(ae4b, exchange_type='fanout')
    ch.exchange_declare(ae4a, exchange_type='direct',
                        arguments={'alternate-exchange': ae4b})
    ch.exchange_declare(x4, exchange_type='direct',
                        arguments={'alternate-exchange': ae4a})
    ch.queue_declare(q4)
    ch.queue_bind(q4, ae4b)
    cch.basic_publish(x4, 'zz', b'chained', mandatory=True)
    eq(drain(ch, q4), [b'chained'], "AE chain")
    # loop of AEs that route nowhere: terminates, returned
    x5, x6 = ctx.x(), ctx.x()
    ch.exchange_declare(x5, exchange_type='direct',
                        arguments={'alternate-exchange': x6})
    ch.exchange_declare(x6, exchange_type='direct',
                        arguments={'alternate-exchange': x5})
    try:
        cch.basic_publish(x5, 'k', b'loop', mandatory=True)
        raise CheckFail("expected basic.return for an AE loop")
    except UnroutableError:
        pass


@check
def ae_argument_type(ctx):
    c, ch = ctx.conn_ch()
    x = ctx.x()
    expect_channel_error(
        lambda: ch.exchange_declare(x, exchange_type='direct',
                                    arguments={'alternate-exchange': 5}),
        406, "PRECONDITION_FAILED - invalid type 'signedint' for arg "
        "'alternate-exchange' in %s" % ctx.vx(x))


@check
def e2e_bind_unbind_loops(ctx):
    c, ch = ctx.conn_ch()
    x1, x2, q = ctx.x(), ctx.x(), ctx.q()
    ch.exchange_declare(x1, exchange_type='topic')
    ch.exchange_declare(x2, exchange_type='fanout')
    ch.queue_declare(q)
    ch.exchange_bind(destination=x2, source=x1, routing_key='a.*')
    ch.queue_bind(q, x2)
    ch.basic_publish(x1, 'a.b', b'1')
    ch.basic_publish(x1, 'b.c', b'2')
    m = wait_get(c, ch, q)
    eq((m[2], m[0].exchange, m[0].routing_key), (b'1', x1, 'a.b'),
       "delivered with the exchange the message was PUBLISHED to")
    settle(c)
    eq(get1(ch, q), None, "non-matching key filtered by the e2e binding")
    # two distinct e2e bindings that both match: still one copy
    ch.exchange_bind(destination=x2, source=x1, routing_key='#')
    ch.basic_publish(x1, 'a.b', b'3')
    eq(wait_get(c, ch, q)[2], b'3', "delivered")
    settle(c)
    eq(get1(ch, q), None, "one copy per queue over multiple paths")
    ch.exchange_unbind(destination=x2, source=x1, routing_key='#')
    ch.exchange_unbind(destination=x2, source=x1, routing_key='a.*')
    ch.basic_publish(x1, 'a.b', b'4')
    barrier(ch)
    settle(c)
    eq(get1(ch, q), None, "nothing after exchange.unbind")
    # unbinding a binding that does not exist is fine
    ch.exchange_unbind(destination=x2, source=x1, routing_key='nope')
    # loops: y1 <-> y2 (fanout), queue bound to both -> exactly one copy
    y1, y2, q2 = ctx.x(), ctx.x(), ctx.q()
    for y in (y1, y2):
        ch.exchange_declare(y, exchange_type='fanout')
    ch.queue_declare(q2)
    ch.exchange_bind(destination=y2, source=y1)
    ch.exchange_bind(destination=y1, source=y2)
    ch.queue_bind(q2, y1)
    ch.queue_bind(q2, y2)
    ch.basic_publish(y1, '', b'L1')
    ch.basic_publish(y2, '', b'L2')
    pump(c, lambda: ready_count(ch, q2) >= 2, what="loop deliveries")
    settle(c)
    eq(drain(ch, q2), [b'L1', b'L2'], "one copy each despite the loop")
    # self-binding is allowed and harmless
    ch.exchange_bind(destination=y1, source=y1)
    ch.basic_publish(y1, '', b'S')
    eq(wait_get(c, ch, q2)[2], b'S', "self-bound exchange")
    settle(c)
    eq(get1(ch, q2), None, "one copy")
    # missing source / destination: 404 naming the missing exchange
    missing = ctx.x()
    expect_channel_error(
        lambda: ch.exchange_bind(destination=y1, source=missing), 404,
        "NOT_FOUND - no %s" % ctx.vx(missing))
    ch = c.channel()
    expect_channel_error(
        lambda: ch.exchange_bind(destination=missing, source=y1), 404,
        "NOT_FOUND - no %s" % ctx.vx(missing))


@check
def sender_selected_cc_bcc(ctx):
    c, ch = ctx.conn_ch()
    x = ctx.x()
    ch.exchange_declare(x, exchange_type='direct')
    q1, q2, q3, q4 = ctx.q(), ctx.q(), ctx.q(), ctx.q()
    for qq, k in ((q1, 'k1'), (q2, 'k2'), (q3, 'k3'), (q4, 'k4')):
        ch.queue_declare(qq)
        ch.queue_bind(qq, x, k)
    ch.basic_publish(x, 'k1', b'm', P(headers={'CC': ['k2'], 'BCC': ['k3'],
                                               'other': 'kept'}))
    for qq in (q1, q2, q3):
        meth, props, body = wait_get(c, ch, qq)
        h = hdrs(props)
        # routing key of the delivery is the publish routing key everywhere;
        # CC is delivered, BCC is stripped (also for the BCC recipient)
        eq((meth.routing_key, h.get('CC'), 'BCC' in h, h.get('other')),
           ('k1', ['k2'], False, 'kept'), "delivery to %s" % qq)
    settle(c)
    eq([ready_count(ch, qq) for qq in (q1, q2, q3, q4)], [0, 0, 0, 0],
       "exactly one copy per matched queue, nothing to k4")
    # duplicates across rk/CC/BCC give one copy; several CC keys work
    ch.basic_publish(x, 'k1', b'd', P(headers={'CC': ['k1', 'k2', 'k4'],
                                               'BCC': ['k2']}))
    pump(c, lambda: all(ready_count(ch, qq) == 1 for qq in (q1, q2, q4)),
         what="one copy each")
    settle(c)
    eq([ready_count(ch, qq) for qq in (q1, q2, q3, q4)], [1, 1, 0, 1],
       "dedup")
    # the default exchange honours CC / BCC queue names too
    ch.basic_publish('', 'no-such-queue-' + ctx.tag, b'dflt',
                     P(headers={'BCC': [q3]}))
    m = wait_get(c, ch, q3)
    eq((m[2], m[0].routing_key, 'BCC' in hdrs(m[1])),
       (b'dflt', 'no-such-queue-' + ctx.tag, False), "BCC via default exchange")
    # mandatory: a message routed only via CC is routed (no basic.return)
    c2, cch = ctx.confirm_ch()
    cch.basic_publish(x, 'nomatch', b'cc-only', P(headers={'CC': ['k4']}),
                      mandatory=True)
    pump(c, lambda: ready_count(ch, q4) == 2, what="CC-only routing")


@check
def sender_selected_bad_header_type(ctx):
    # NOTE: CC/BCC must be arrays; any other type makes the publish a channel
    # error (rabbit_basic:header_routes/1 -> "invalid message").
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q)
    ch.basic_publish('', q, b'x', P(headers={'CC': 'k2'}))
    expect_channel_error(
        lambda: barrier(ch), 406,
        'PRECONDITION_FAILED - invalid message: '
        '{unacceptable_type_in_header,"CC",longstr}')
    ch = c.channel()
    ch.basic_publish('', q, b'x', P(headers={'BCC': 5}))
    expect_channel_error(
        lambda: barrier(ch), 406,
        'PRECONDITION_FAILED - invalid message: '
        '{unacceptable_type_in_header,"BCC",signedint}')
    # array elements that are not strings are ignored
    ch = c.channel()
    ch.basic_publish('', q, b'y', P(headers={'CC': [5, True]}))
    barrier(ch)
    pump(c, lambda: ready_count(ch, q) == 1, what="published")


# ---------------------------------------------------------------------------
# direct reply-to
# ---------------------------------------------------------------------------

RT = 'amq.rabbitmq.reply-to'


@check
def direct_reply_to_roundtrip(ctx):
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q)
    replies = Collector()
    # the pseudo-queue needs no declare; consume in no-ack mode first
    ctag = ch.basic_consume(RT, replies, auto_ack=True)
    # declaring the bare name (passive or not) is OK: 0 messages, 1 consumer
    r = ch.queue_declare(RT, passive=True)
    eq((r.method.queue, r.method.message_count, r.method.consumer_count),
       (RT, 0, 1), "declare-ok of the pseudo-queue")
    ch.basic_publish('', q, b'req', P(reply_to=RT, correlation_id='c1'))
    c2, ch2 = ctx.conn_ch()
    m = wait_get(c2, ch2, q)
    reply_to = m[1].reply_to
    expect(reply_to.startswith(RT + '.') and len(reply_to) > len(RT) + 1,
           "reply_to rewritten to amq.rabbitmq.reply-to.<suffix>: %r" % reply_to)
    # the responder may check the requester is there with a declare:
    # 0 ready, 1 consumer
    r = ch2.queue_declare(reply_to, passive=True)
    eq((r.method.queue, r.method.message_count, r.method.consumer_count),
       (reply_to, 0, 1), "declare of the reply name")
    ch2.basic_publish('', reply_to, b'resp', P(correlation_id='c1'))
    pump(c, lambda: replies.msgs, what="reply")
    meth, props, body = replies.msgs[0]
    eq((body, meth.exchange, meth.routing_key, meth.consumer_tag,
        props.correlation_id), (b'resp', '', reply_to, ctag, 'c1'),
       "reply delivery")
    # a reply to an unknown / stale suffix is silently dropped
    ch2.basic_publish('', RT + '.bogus-suffix', b'lost')
    barrier(ch2)
    # after the requester cancels, the name is gone: 404, replies dropped
    ch.basic_cancel(ctag)
    expect_channel_error(lambda: ch2.queue_declare(reply_to, passive=True),
                         404, "NOT_FOUND - no %s" % ctx.vq(reply_to))
    ch2 = c2.channel()
    ch2.basic_publish('', reply_to, b'late')
    barrier(ch2)
    settle(c)
    eq(len(replies.msgs), 1, "no reply after cancel")


@check
def direct_reply_to_mandatory(ctx):
    c, ch = ctx.conn_ch()
    replies = Collector()
    ch.basic_consume(RT, replies, auto_ack=True)
    q = ctx.q()
    ch.queue_declare(q)
    ch.basic_publish('', q, b'req', P(reply_to=RT))
    c2, cch = ctx.confirm_ch()
    ch2 = c2.channel()
    reply_to = wait_get(c2, ch2, q)[1].reply_to
    returned = False
    try:
        cch.basic_publish('', reply_to, b'resp', mandatory=True)
    except UnroutableError:
        returned = True
    pump(c, lambda: replies.msgs, what="reply delivered")
    if at_least(ctx, 4, 2):
        # 4.x differs (4.2+ only): direct reply-to became a real (volatile)
        # queue type, rabbit_volatile_queue, so the reply name is a routing
        # target and a mandatory reply is NOT returned (docs/direct-reply-to
        # for 4.2+: "a message routed solely to this name is considered
        # routed, and RabbitMQ will not send a basic.return").  Up to 4.1 the
        # docs say the opposite (versioned_docs/version-4.1: "a basic.return
        # will be sent if the mandatory flag was set") and 3.13-4.1 code
        # (rabbit_channel: lookup_many of {virtual_reply_queue, RK} finds no
        # queue) behaves like 3.10.
        eq(returned, False, "mandatory reply not returned")
    else:
        # NOTE: up to 4.1 the reply is delivered AND returned 312 NO_ROUTE to
        # a mandatory publisher (the virtual reply name is not a queue).
        eq(returned, True, "mandatory reply returned (<= 4.1)")


@check
def direct_reply_to_errors(ctx):
    c = ctx.connect()
    q = ctx.q()
    ch = c.channel()
    ch.queue_declare(q)
    # publishing with reply_to=amq.rabbitmq.reply-to without consuming from
    # it on THIS channel
    ch.basic_publish('', q, b'x', P(reply_to=RT))
    expect_channel_error(lambda: barrier(ch), 406,
                         "PRECONDITION_FAILED - fast reply consumer does not "
                         "exist")
    # ... consuming on another channel does not help
    ch = c.channel()
    other = c.channel()
    other.basic_consume(RT, lambda *a: None, auto_ack=True)
    ch.basic_publish('', q, b'x', P(reply_to=RT))
    expect_channel_error(lambda: barrier(ch), 406,
                         "PRECONDITION_FAILED - fast reply consumer does not "
                         "exist")
    # consuming in ack mode
    ch = c.channel()
    expect_channel_error(lambda: ch.basic_consume(RT, lambda *a: None,
                                                  auto_ack=False), 406,
                         "PRECONDITION_FAILED - reply consumer cannot "
                         "acknowledge")
    # a second reply consumer on the same channel
    ch = c.channel()
    ch.basic_consume(RT, lambda *a: None, auto_ack=True)
    expect_channel_error(lambda: ch.basic_consume(RT, lambda *a: None,
                                                  auto_ack=True), 406,
                         "PRECONDITION_FAILED - reply consumer already set")
    expect(c.is_open, "all direct reply-to errors are channel-level")
    eq(ready_count(c.channel(), q), 0, "the failed publishes were not routed")


# ---------------------------------------------------------------------------
# transactions with acks / rejects
# ---------------------------------------------------------------------------


@check
def tx_publish_ack_reject(ctx):
    c, ch = ctx.conn_ch()
    obs = c.channel()
    dlx, dlq, q = _dl_setup(ctx, obs)
    ch.tx_select()
    ch.basic_publish('', q, b'1')
    ch.basic_publish('', q, b'2')
    barrier(ch)
    eq(ready_count(obs, q), 0, "uncommitted publishes invisible")
    ch.tx_rollback()
    eq(ready_count(obs, q), 0, "rolled back")
    ch.basic_publish('', q, b'3')
    ch.basic_publish('', q, b'4')
    ch.tx_commit()
    eq(ready_count(obs, q), 2, "committed publishes visible at commit-ok")
    m3 = get1(ch, q, auto_ack=False)
    m4 = get1(ch, q, auto_ack=False)
    eq((m3[2], m4[2]), (b'3', b'4'), "fetched")
    # reject(requeue=false) inside the tx: nothing happens until commit
    ch.basic_reject(m3[0].delivery_tag, requeue=False)
    barrier(ch)
    eq(ready_count(obs, dlq), 0, "uncommitted reject: not dead-lettered yet")
    ch.tx_rollback()
    eq((ready_count(obs, q), ready_count(obs, dlq)), (0, 0),
       "rolled-back reject: the message stays unacked (not requeued)")
    # the same delivery tag can be settled again after a rollback
    ch.basic_reject(m3[0].delivery_tag, requeue=False)
    ch.basic_nack(m4[0].delivery_tag, requeue=True)
    ch.tx_commit()
    d = wait_get(c, obs, dlq, what="committed reject dead-lettered")
    eq((d[2], death_summary(d[1])[0][:3]), (b'3', (q, 'rejected', 1)),
       "reject committed")
    r = wait_get(c, obs, q, what="committed nack requeued")
    eq((r[2], r[0].redelivered), (b'4', True), "nack(requeue) committed")
    # an ack in a tx is also deferred; rollback keeps the message unacked
    ch.basic_publish('', q, b'5')
    ch.tx_commit()
    m5 = wait_get(c, ch, q, auto_ack=False)
    ch.basic_ack(m5[0].delivery_tag)
    ch.tx_rollback()
    ch.basic_ack(m5[0].delivery_tag)
    ch.tx_commit()
    ch.close()
    settle(c)
    eq(ready_count(obs, q), 0, "acked in the second tx: not requeued on close")


# ---------------------------------------------------------------------------
# validated user-id
# ---------------------------------------------------------------------------


@check
def user_id_validation(ctx):
    c, ch = ctx.conn_ch()
    q = ctx.q()
    ch.queue_declare(q)
    ch.basic_publish('', q, b'ok', P(user_id=ctx.user))
    m = wait_get(c, ch, q)
    eq(m[1].user_id, ctx.user, "user_id delivered")
    ch.basic_publish('', q, b'forged', P(user_id='not-' + ctx.user))
    expect_channel_error(
        lambda: barrier(ch), 406,
        "PRECONDITION_FAILED - user_id property set to 'not-%s' but "
        "authenticated user was '%s'" % (ctx.user, ctx.user))
    ch = c.channel()
    eq(ready_count(ch, q), 0, "forged message not routed")
    # the check is an exact comparison (case-sensitive)
    ch.basic_publish('', q, b'upper', P(user_id=ctx.user.upper()))
    expect_channel_error(lambda: barrier(ch), 406)


# ---------------------------------------------------------------------------
# auto-delete exchanges, exclusive queues
# ---------------------------------------------------------------------------


def _x_exists(c, x):
    ch = c.channel()
    try:
        ch.exchange_declare(x, passive=True)
    except ChannelClosedByBroker as e:
        if e.reply_code == 404:
            return False
        raise
    ch.close()
    return True


@check
def auto_delete_exchange(ctx):
    c, ch = ctx.conn_ch()
    x, q1, q2 = ctx.x(), ctx.q(), ctx.q()
    ch.exchange_declare(x, exchange_type='direct', auto_delete=True)
    # never bound: stays
    expect(_x_exists(c, x), "auto-delete exchange without bindings survives")
    ch.queue_declare(q1)
    ch.queue_declare(q2)
    ch.queue_bind(q1, x, 'a')
    ch.queue_bind(q1, x, 'b')
    ch.queue_bind(q2, x, 'a')
    ch.queue_unbind(q1, x, 'a')
    ch.queue_unbind(q1, x, 'b')
    expect(_x_exists(c, x), "still has a binding")
    # deleting the last bound queue removes the last binding -> exchange gone
    ch.queue_delete(q2)
    expect(not _x_exists(c, x), "deleted with its last binding (queue.delete)")
    # queue.unbind of the last binding
    x2, q3 = ctx.x(), ctx.q()
    ch.exchange_declare(x2, exchange_type='fanout', auto_delete=True)
    ch.queue_declare(q3)
    ch.queue_bind(q3, x2)
    ch.queue_unbind(q3, x2)
    expect(not _x_exists(c, x2), "deleted with its last binding (unbind)")
    # e2e: only bindings where the exchange is the SOURCE count
    src, dst, plain = ctx.x(), ctx.x(), ctx.x()
    ch.exchange_declare(src, exchange_type='fanout', auto_delete=True)
    ch.exchange_declare(dst, exchange_type='fanout', auto_delete=True)
    ch.exchange_declare(plain, exchange_type='fanout')
    ch.exchange_bind(destination=plain, source=src)
    ch.exchange_bind(destination=dst, source=plain)
    ch.exchange_unbind(destination=dst, source=plain)
    expect(_x_exists(c, dst), "destination-only auto-delete exchange stays")
    ch.exchange_unbind(destination=plain, source=src)
    expect(not _x_exists(c, src), "source auto-delete exchange deleted")
    expect(_x_exists(c, plain), "non-auto-delete exchange stays")
    # an auto-delete queue (deleted with its last consumer) takes its
    # bindings with it, which in turn deletes an auto-delete exchange
    x3 = ctx.x()
    ch.exchange_declare(x3, exchange_type='fanout', auto_delete=True)
    r = ch.queue_declare('', auto_delete=True)
    adq = r.method.queue
    ch.queue_bind(adq, x3)
    tag = ch.basic_consume(adq, lambda *a: None, auto_ack=True)
    ch.basic_cancel(tag)
    pump(c, lambda: not _x_exists(c, x3), what="cascade auto-delete")


@check
def exclusive_queue_lifecycle(ctx):
    c1, ch1 = ctx.conn_ch()
    c2, ch2 = ctx.conn_ch()
    q = ctx.q()
    ch1.queue_declare(q, exclusive=True)
    expect_channel_error(
        lambda: ch2.queue_declare(q, passive=True), 405,
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked %s. It "
        "could be originally declared on another connection or the exclusive "
        "property value does not match that of the original declaration."
        % ctx.vq(q))
    ch2 = c2.channel()
    # another connection may still publish to it
    ch2.basic_publish('', q, b'x')
    barrier(ch2)
    pump(c1, lambda: ready_count(ch1, q) == 1, what="published by others")
    c1.close()
    expect_channel_error(lambda: ch2.queue_declare(q, passive=True), 404,
                         "NOT_FOUND - no %s" % ctx.vq(q))


# ---------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------

# (args, expected detail) ; detail None = accepted.  The full text is
# "PRECONDITION_FAILED - invalid arg '<key>' for queue '<q>' in vhost '<v>': <detail>"
# (the detail is an Erlang term printed with ~255p: strings in double quotes).
QUEUE_ARG_CASES = [
    ({'x-message-ttl': 'abc'}, '"expected integer, got longstr"'),
    ({'x-message-ttl': -1}, '{value_negative,-1}'),
    ({'x-message-ttl': 1.5}, '"expected integer, got double"'),
    ({'x-message-ttl': True}, '"expected integer, got bool"'),
    ({'x-message-ttl': 315360000001}, '{value_too_large,315360000001}'),
    ({'x-message-ttl': 315360000000}, None),     # 10 years: the maximum
    ({'x-message-ttl': 0}, None),
    ({'x-message-ttl': Typed('b', 5)}, None),
    ({'x-message-ttl': Typed('s', 5)}, None),
    ({'x-message-ttl': Typed('l', 5)}, None),
    ({'x-message-ttl': Typed('B', 5)}, None),
    ({'x-message-ttl': Typed('u', 5)}, None),
    ({'x-message-ttl': Typed('i', 5)}, None),
    ({'x-message-ttl': Typed('f', 5.0)}, '"expected integer, got float"'),
    ({'x-expires': 0}, '{value_zero,0}'),
    ({'x-expires': -1}, '{value_negative,-1}'),
    ({'x-expires': 'abc'}, '"expected integer, got longstr"'),
    ({'x-expires': 315360000001}, '{value_too_large,315360000001}'),
    ({'x-expires': 1}, None),
    ({'x-max-length': 'abc'}, '"expected integer, got longstr"'),
    ({'x-max-length': -1}, '{value_negative,-1}'),
    ({'x-max-length': 0}, None),
    ({'x-max-length-bytes': -5}, '{value_negative,-5}'),
    ({'x-max-length-bytes': b'10'}, '"expected integer, got binary"'),
    ({'x-max-length-bytes': 0}, None),
    ({'x-max-priority': 256}, '{max_value_exceeded,256}'),
    ({'x-max-priority': -1}, '{value_negative,-1}'),
    ({'x-max-priority': 'abc'}, '"expected integer, got longstr"'),
    ({'x-max-priority': 0}, None),
    ({'x-max-priority': 255}, None),
    ({'x-overflow': 'bogus'}, 'invalid_overflow'),
    ({'x-overflow': 5}, '{unacceptable_type,signedint}'),
    ({'x-overflow': 'drop-head'}, None),
    ({'x-overflow': 'reject-publish'}, None),
    ({'x-overflow': 'reject-publish-dlx'}, None),
    ({'x-dead-letter-exchange': ''}, None),
    ({'x-dead-letter-exchange': 'does-not-exist-yet'}, None),
    ({'x-dead-letter-routing-key': 'k'}, 'routing_key_but_no_dlx_defined'),
    ({'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 5},
     '{unacceptable_type,signedint}'),
    ({'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'k'}, None),
    ({'x-single-active-consumer': 'yes'}, '{unacceptable_type,longstr}'),
    ({'x-single-active-consumer': 1}, '{unacceptable_type,signedint}'),
    ({'x-single-active-consumer': False}, None),
    ({'x-queue-mode': 'lazy'}, None),
    ({'x-queue-mode': 'default'}, None),
    ({'x-queue-type': 'nope'}, '"unsupported queue type \'nope\'"'),
    ({'x-queue-type': 5}, '{unacceptable_type,signedint}'),
    ({'x-queue-type': 'classic'}, None),
    ({'x-unknown-argument': 'whatever'}, None),
]


@check
def queue_declare_argument_validation(ctx):
    c = ctx.connect()
    bad = []
    for args, detail in QUEUE_ARG_CASES:
        ch = c.channel()
        q = ctx.q()
        shown = {k: (v.tag, v.value) if isinstance(v, Typed) else v
                 for k, v in args.items()}
        try:
            ch.queue_declare(q, arguments=args)
            got = None
        except ChannelClosedByBroker as e:
            got = (e.reply_code, e.reply_text)
        if detail is None:
            if got is not None:
                bad.append("%r: expected accepted, got %r" % (shown, got))
            else:
                ch.close()
            continue
        key = [k for k in args if k != 'x-dead-letter-exchange'] or list(args)
        want = (406, "PRECONDITION_FAILED - invalid arg '%s' for %s: %s"
                % (key[0], ctx.vq(q), detail))
        if got != want:
            bad.append("%r: expected %r, got %r" % (shown, want, got))
    expect(not bad, "; ".join(bad))
    # a failed declare creates nothing
    ch = c.channel()
    q = ctx.q()
    expect_channel_error(lambda: ch.queue_declare(
        q, arguments={'x-max-length': -1}), 406)
    ch = c.channel()
    expect_channel_error(lambda: ch.queue_declare(q, passive=True), 404)


@check
def queue_declare_argument_validation_special(ctx):
    c = ctx.connect()
    # x-dead-letter-exchange of a non-string type is checked by the channel
    # BEFORE the generic validator, with a different text
    ch = c.channel()
    q = ctx.q()
    expect_channel_error(
        lambda: ch.queue_declare(q, arguments={'x-dead-letter-exchange': 5}),
        406, "PRECONDITION_FAILED - invalid type 'signedint' for arg "
        "'x-dead-letter-exchange' in %s" % ctx.vq(q))
    # x-queue-mode with an unknown string / a non-string
    for val, detail in (('bogus', '"unsupported queue mode \'bogus\'"'),
                        (5, '{unacceptable_type,signedint}')):
        ch = c.channel()
        q = ctx.q()
        if at_least(ctx, 4, 3):
            # 4.x differs (4.3+ only): the x-queue-mode validator was removed
            # (rabbitmq-server commit a67de22 "Remove x-queue-mode and
            # restrict x-queue-version to 2"); x-queue-mode is still a known
            # classic-queue argument, so any value is accepted and ignored.
            # 4.0-4.2 give the same errors as 3.10.
            ch.queue_declare(q, arguments={'x-queue-mode': val})
        else:
            expect_channel_error(
                lambda: ch.queue_declare(q, arguments={'x-queue-mode': val}),
                406, "PRECONDITION_FAILED - invalid arg 'x-queue-mode' for "
                "%s: %s" % (ctx.vq(q), detail))
    # arguments that belong to another queue type
    ch = c.channel()
    q = ctx.q()
    expect_channel_error(
        lambda: ch.queue_declare(q, arguments={'x-max-in-memory-length': 5}),
        406, "PRECONDITION_FAILED - invalid arg 'x-max-in-memory-length' for "
        "%s of queue type rabbit_classic_queue" % ctx.vq(q))
    # arguments are only validated for NEW queues; a redeclare compares them
    ch = c.channel()
    q = ctx.q()
    ch.queue_declare(q, arguments={'x-max-length': 10})
    expect_channel_error(
        lambda: ch.queue_declare(q, arguments={'x-max-length': -1}), 406,
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for %s: "
        "received '-1' but current is '10'" % ctx.vq(q))


@check
def consumer_argument_validation(ctx):
    c = ctx.connect()
    q = ctx.q()
    c.channel().queue_declare(q)
    for val, detail in (('high', '"expected integer, got longstr"'),
                        (1.5, '"expected integer, got double"'),
                        (True, '"expected integer, got bool"')):
        ch = c.channel()
        expect_channel_error(
            lambda: ch.basic_consume(q, lambda *a: None,
                                     arguments={'x-priority': val}),
            406, "PRECONDITION_FAILED - invalid arg 'x-priority' for %s: %s"
            % (ctx.vq(q), detail))
    ch = c.channel()
    for val in (Typed('b', -3), Typed('l', 2 ** 40), 0, -(2 ** 31)):
        ch.basic_consume(q, lambda *a: None, arguments={'x-priority': val})
    # unknown consumer arguments are ignored
    ch.basic_consume(q, lambda *a: None, arguments={'x-whatever': 'x'})
    eq(consumer_count(ch, q), 5, "consumers registered")


# ---------------------------------------------------------------------------
# runner
# ---------------------------------------------------------------------------


def _alarm(signum, frame):
    raise CheckTimeout("check exceeded %ds" % CHECK_TIMEOUT)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    url = argv[1]
    filters = [f for f in argv[2:] if not f.startswith('-')]
    # "-name" excludes checks whose name contains "name".
    excluded = [f[1:] for f in argv[2:] if f.startswith('-')]
    signal.signal(signal.SIGALRM, _alarm)
    failed = 0
    ran = 0
    t0 = time.monotonic()
    for fn in CHECKS:
        name = fn.__name__
        if filters and not any(f in name for f in filters):
            continue
        if any(f in name for f in excluded):
            continue
        ran += 1
        if time.monotonic() - t0 > TOTAL_BUDGET:
            failed += 1
            print("FAIL %s: not run (total budget %ds exhausted)"
                  % (name, TOTAL_BUDGET))
            continue
        ctx = Ctx(url)
        signal.alarm(CHECK_TIMEOUT)
        try:
            fn(ctx)
            signal.alarm(0)
            print("ok %s" % name)
        except CheckFail as e:
            signal.alarm(0)
            failed += 1
            print("FAIL %s: %s" % (name, e))
        except Exception as e:
            signal.alarm(0)
            failed += 1
            tb = traceback.extract_tb(sys.exc_info()[2])
            where = next((("line %d" % f.lineno) for f in reversed(tb)
                          if f.filename == __file__), "?")
            print("FAIL %s: %s: %s (%s)" % (name, type(e).__name__, e, where))
        finally:
            signal.alarm(CHECK_TIMEOUT)
            try:
                ctx.cleanup()
            except Exception:
                pass
            signal.alarm(0)
        sys.stdout.flush()
    print("# elapsed %.1fs" % (time.monotonic() - t0))
    print("%d passed, %d failed" % (ran - failed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
