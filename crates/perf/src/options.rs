//! Command-line options, named after RabbitMQ PerfTest's where one exists.

use std::time::Duration;

use anyhow::{Context as _, bail};
use warren_wire::{FieldTable, FieldValue, ShortString};

pub(crate) const USAGE: &str = "usage: warren-perf [options]
  -h, --uri URI              broker URI (repeat for several; consumers use them from the last)
  -x, --producers N          producers, each on its own connection (default 1)
  -y, --consumers N          consumers, each on its own connection (default 1)
      --queues N             queues; producer/consumer i uses queue i mod N (default 1)
  -u, --queue-pattern P      queue name, %d replaced by the index (default perf-q-%d)
      --predeclared          do not declare queues or exchanges
  -s, --size BYTES           message body size (default 16; at least 8 carry the timestamp)
  -c, --confirm WINDOW       publisher confirms, at most WINDOW unconfirmed per producer
  -f, --persistent           delivery mode 2
      --durable              durable queues (and exchange)
      --queue-arg K=V        queue argument (integers and true/false typed, else string)
  -e, --exchange NAME        publish to this exchange (declared) instead of the default one
  -t, --type TYPE            exchange type (default direct)
  -k, --routing-key KEY      routing key (default: the queue name)
      --extra-bindings N     bindings per queue that match nothing (routing with many bindings)
  -a, --auto-ack             consume without acknowledgements
  -A, --multi-ack-every N    acknowledge every N messages with multiple=true (default 1)
  -q, --qos N                prefetch count (default 0: none)
  -r, --rate N               messages per second per producer (default: as fast as possible)
  -z, --time SECONDS         run time
  -C, --pmessages N          messages per producer
  -D, --cmessages N          messages per consumer
      --idle-connections N   open N connections with one channel each and hold them (--time)
      --threads N            worker threads (default 2)
      --json                 one JSON object as the result";

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) uris: Vec<String>,
    pub(crate) producers: usize,
    pub(crate) consumers: usize,
    pub(crate) queues: usize,
    pub(crate) queue_pattern: String,
    pub(crate) predeclared: bool,
    pub(crate) size: usize,
    pub(crate) confirm: Option<usize>,
    pub(crate) persistent: bool,
    pub(crate) durable: bool,
    pub(crate) queue_arguments: FieldTable,
    pub(crate) exchange: String,
    pub(crate) exchange_type: String,
    pub(crate) routing_key: Option<String>,
    pub(crate) extra_bindings: usize,
    pub(crate) auto_ack: bool,
    pub(crate) multi_ack_every: usize,
    pub(crate) prefetch: u16,
    pub(crate) rate: Option<f64>,
    pub(crate) time: Option<Duration>,
    pub(crate) pmessages: Option<u64>,
    pub(crate) cmessages: Option<u64>,
    pub(crate) idle_connections: usize,
    pub(crate) threads: usize,
    pub(crate) json: bool,
}

pub(crate) fn parse(mut arguments: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut options = Options {
        uris: Vec::new(),
        producers: 1,
        consumers: 1,
        queues: 1,
        queue_pattern: "perf-q-%d".into(),
        predeclared: false,
        size: 16,
        confirm: None,
        persistent: false,
        durable: false,
        queue_arguments: FieldTable::new(),
        exchange: String::new(),
        exchange_type: "direct".into(),
        routing_key: None,
        extra_bindings: 0,
        auto_ack: false,
        multi_ack_every: 1,
        prefetch: 0,
        rate: None,
        time: None,
        pmessages: None,
        cmessages: None,
        idle_connections: 0,
        threads: 2,
        json: false,
    };
    while let Some(flag) = arguments.next() {
        let mut value = |name: &str| {
            arguments
                .next()
                .with_context(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--uri" => options.uris.push(value(&flag)?),
            "-x" | "--producers" => options.producers = value(&flag)?.parse()?,
            "-y" | "--consumers" => options.consumers = value(&flag)?.parse()?,
            "--queues" => options.queues = value(&flag)?.parse()?,
            "-u" | "--queue-pattern" => options.queue_pattern = value(&flag)?,
            "--predeclared" => options.predeclared = true,
            "-s" | "--size" => options.size = value(&flag)?.parse()?,
            "-c" | "--confirm" => options.confirm = Some(value(&flag)?.parse()?),
            "-f" | "--persistent" => options.persistent = true,
            "--durable" => options.durable = true,
            "--queue-arg" => {
                let text = value(&flag)?;
                let (key, raw) = text
                    .split_once('=')
                    .context("--queue-arg takes KEY=VALUE")?;
                let value = match (raw.parse::<i64>(), raw) {
                    (Ok(number), _) => FieldValue::LongLongInt(number),
                    (_, "true") => FieldValue::Boolean(true),
                    (_, "false") => FieldValue::Boolean(false),
                    (_, text) => FieldValue::from(text),
                };
                options
                    .queue_arguments
                    .insert(ShortString::try_from(key)?, value);
            }
            "-e" | "--exchange" => options.exchange = value(&flag)?,
            "-t" | "--type" => options.exchange_type = value(&flag)?,
            "-k" | "--routing-key" => options.routing_key = Some(value(&flag)?),
            "--extra-bindings" => options.extra_bindings = value(&flag)?.parse()?,
            "-a" | "--auto-ack" => options.auto_ack = true,
            "-A" | "--multi-ack-every" => options.multi_ack_every = value(&flag)?.parse()?,
            "-q" | "--qos" => options.prefetch = value(&flag)?.parse()?,
            "-r" | "--rate" => options.rate = Some(value(&flag)?.parse()?),
            "-z" | "--time" => options.time = Some(Duration::from_secs_f64(value(&flag)?.parse()?)),
            "-C" | "--pmessages" => options.pmessages = Some(value(&flag)?.parse()?),
            "-D" | "--cmessages" => options.cmessages = Some(value(&flag)?.parse()?),
            "--idle-connections" => options.idle_connections = value(&flag)?.parse()?,
            "--threads" => options.threads = value(&flag)?.parse()?,
            "--json" => options.json = true,
            "--help" => bail!("help"),
            other => bail!("unknown option '{other}'"),
        }
    }
    if options.uris.is_empty() {
        options
            .uris
            .push("amqp://guest:guest@127.0.0.1:5672/%2F".into());
    }
    if options.time.is_none()
        && options.pmessages.is_none()
        && options.cmessages.is_none()
        && options.idle_connections == 0
    {
        options.time = Some(Duration::from_secs(10));
    }
    if options.queues == 0 {
        bail!("--queues must be at least 1");
    }
    Ok(options)
}
