//! The figures of one run, and the Markdown table of Warren / RabbitMQ ratios they make.

use std::time::Duration;

use crate::brokers::{self, Kind};
use crate::{PerfResult, Tools};

/// One measurement.
pub(crate) enum Figure {
    /// RSS of the freshly started broker.
    BaseRss(u64),
    /// A throughput scenario.
    Rate(u32, PerfResult),
    /// Scenario 8.
    Latency(PerfResult),
    /// Scenario 8, Warren at RabbitMQ's rate.
    LatencyAtRabbitRate(PerfResult),
    /// Scenario 8 with the broker on CPU 0 and the load generator on CPU 1: the median run by
    /// p99, and the p99 of every run.
    LatencyPinned(PerfResult, Vec<f64>),
    /// Scenario 6.
    Backlog {
        before: u64,
        loaded: u64,
        after: u64,
        publish_rate: f64,
        drain_rate: f64,
    },
    /// Scenario 7.
    Idle { before: u64, held: u64 },
    /// Scenario 9 (a classic queue) or 15 (a quorum queue).
    Restart {
        scenario: u32,
        empty_boot: Duration,
        served: Duration,
    },
    /// Scenario 13: a three-node cluster's RSS (all nodes) before and with 1M x 16 B in one
    /// quorum queue.
    QuorumBacklog {
        before: u64,
        loaded: u64,
        publish_rate: f64,
    },
    /// Scenario 14: a three-node cluster with 1,000 idle quorum queues: how long declaring
    /// them took, the RSS added, and the CPU the idle cluster used (percent of one core).
    QuorumIdle {
        declared: Duration,
        added: u64,
        cpu_percent: f64,
    },
}

pub(crate) struct Report {
    warren: Vec<Figure>,
    rabbitmq: Vec<Figure>,
    versions: (String, String),
    seconds: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn rate(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.1}k msg/s", value / 1000.0)
    } else {
        format!("{value:.0} msg/s")
    }
}

impl Report {
    pub(crate) fn new(tools: &Tools, seconds: u64) -> Report {
        Report {
            warren: Vec::new(),
            rabbitmq: Vec::new(),
            versions: brokers::versions(tools),
            seconds,
        }
    }

    pub(crate) fn add(&mut self, kind: Kind, figure: Figure) {
        match kind {
            Kind::Warren => self.warren.push(figure),
            Kind::RabbitMq => self.rabbitmq.push(figure),
        }
    }

    pub(crate) fn render(&self, took: Duration) -> String {
        let mut rows: Vec<[String; 5]> = Vec::new();
        let mut row =
            |name: &str, warren: String, rabbitmq: String, ratio: String, target: &str| {
                rows.push([name.into(), warren, rabbitmq, ratio, target.into()]);
            };
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "–".into()
            }
        };
        let names = [
            (1, "1. transient 16 B, 1p/1c, auto-ack (received)", ">= 5x"),
            (
                2,
                "2. transient 1 KiB, 4p/4c, 4 queues, acks, prefetch 200 (received)",
                ">= 3x",
            ),
            (
                3,
                "3. persistent 1 KiB, confirms window 100, acks (confirmed)",
                ">= 2x",
            ),
            (4, "4. fan-out, 10 queues, 1 KiB (deliveries)", ""),
            (5, "5. topic, 10k bindings, 16 B (received)", ""),
            (
                10,
                "10. two-node cluster: queue and producer on node A, consumer on node B, 1 KiB, acks, prefetch 200 (received)",
                "",
            ),
            (
                11,
                "11. three-node cluster, quorum queue led on A: persistent 1 KiB, confirms window 100 on A, acks on B (confirmed)",
                ">= 3x",
            ),
            (
                12,
                "11 again through lapin (a second, independent client library): same load (confirmed)",
                "",
            ),
        ];
        for (scenario, name, target) in names {
            let find = |figures: &[Figure]| {
                figures.iter().find_map(|figure| match figure {
                    Figure::Rate(number, result) if *number == scenario => Some(result.clone()),
                    _ => None,
                })
            };
            if let (Some(w), Some(r)) = (find(&self.warren), find(&self.rabbitmq)) {
                let pick = |result: &PerfResult| {
                    if matches!(scenario, 3 | 11 | 12) {
                        result.confirm_rate
                    } else {
                        result.consume_rate
                    }
                };
                // The broker's CPU per message beside its throughput: where the client library
                // is the ceiling, this ratio still holds.
                let with_cpu = |result: &PerfResult| {
                    let figure = rate(pick(result));
                    if result.broker_cpu_us_per_message > 0.0 {
                        format!(
                            "{figure} ({:.1} µs CPU/msg)",
                            result.broker_cpu_us_per_message
                        )
                    } else {
                        figure
                    }
                };
                let cpu_ratio =
                    if w.broker_cpu_us_per_message > 0.0 && r.broker_cpu_us_per_message > 0.0 {
                        format!(
                            " ({:.2}x less CPU/msg)",
                            r.broker_cpu_us_per_message / w.broker_cpu_us_per_message
                        )
                    } else {
                        String::new()
                    };
                row(
                    name,
                    with_cpu(&w),
                    with_cpu(&r),
                    format!("{}{cpu_ratio}", ratio(pick(&w), pick(&r))),
                    target,
                );
            }
        }
        let backlog = |figures: &[Figure]| {
            figures.iter().find_map(|figure| match figure {
                Figure::Backlog {
                    before,
                    loaded,
                    after,
                    publish_rate,
                    drain_rate,
                } => Some((*before, *loaded, *after, *publish_rate, *drain_rate)),
                _ => None,
            })
        };
        if let (Some(w), Some(r)) = (backlog(&self.warren), backlog(&self.rabbitmq)) {
            let per_message = |(before, loaded, ..): (u64, u64, u64, f64, f64)| {
                loaded.saturating_sub(before) as f64 / 1_000_000.0
            };
            row(
                "6. backlog 1M x 16 B: RSS per queued message",
                format!("{:.0} B", per_message(w)),
                format!("{:.0} B", per_message(r)),
                ratio(per_message(w), per_message(r)),
                "<= 0.10x",
            );
            row(
                "6. backlog: RSS before / loaded / drained",
                format!("{} / {} / {}", mib(w.0), mib(w.1), mib(w.2)),
                format!("{} / {} / {}", mib(r.0), mib(r.1), mib(r.2)),
                String::new(),
                "",
            );
            row(
                "6. backlog: publish rate (confirms window 1000)",
                rate(w.3),
                rate(r.3),
                ratio(w.3, r.3),
                "",
            );
            row(
                "6. backlog: drain rate",
                rate(w.4),
                rate(r.4),
                ratio(w.4, r.4),
                "",
            );
        }
        let idle = |figures: &[Figure]| {
            figures.iter().find_map(|figure| match figure {
                Figure::Idle { before, held } => Some(held.saturating_sub(*before)),
                _ => None,
            })
        };
        if let (Some(w), Some(r)) = (idle(&self.warren), idle(&self.rabbitmq)) {
            row(
                "7. 10k idle connections: RSS added",
                format!("{} ({:.1} KiB each)", mib(w), w as f64 / 1024.0 / 10_000.0),
                format!("{} ({:.1} KiB each)", mib(r), r as f64 / 1024.0 / 10_000.0),
                ratio(w as f64, r as f64),
                "<= 0.25x",
            );
        }
        let latency = |figures: &[Figure]| {
            figures.iter().find_map(|figure| match figure {
                Figure::Latency(result) => Some(result.clone()),
                _ => None,
            })
        };
        if let (Some(w), Some(r)) = (latency(&self.warren), latency(&self.rabbitmq)) {
            let text = |result: &PerfResult| {
                format!(
                    "p99 {:.0} µs (p50 {:.0}, p99.9 {:.0}) at {}",
                    result.p99_us,
                    result.p50_us,
                    result.p999_us,
                    rate(result.publish_rate)
                )
            };
            let pinned = |figures: &[Figure]| {
                figures.iter().find_map(|figure| match figure {
                    Figure::LatencyPinned(result, all) => Some((result.clone(), all.clone())),
                    _ => None,
                })
            };
            let runs = |all: &[f64]| {
                all.iter()
                    .map(|p99| format!("{p99:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if let (Some((pw, wall)), Some((pr, rall))) =
                (pinned(&self.warren), pinned(&self.rabbitmq))
            {
                row(
                    "8. latency at half of each broker's own scenario 1 peak, broker on CPU 0, warren-perf on CPU 1 (median of three runs by p99)",
                    format!("{}; p99 of the runs: {} µs", text(&pw), runs(&wall)),
                    format!("{}; p99 of the runs: {} µs", text(&pr), runs(&rall)),
                    String::new(),
                    "p99 <= 1 ms",
                );
            }
            row(
                "8. the same with both programs sharing both CPUs",
                text(&w),
                text(&r),
                String::new(),
                "",
            );
            let same_rate = self.warren.iter().find_map(|figure| match figure {
                Figure::LatencyAtRabbitRate(result) => Some(result.clone()),
                _ => None,
            });
            if let Some(same) = same_rate {
                row(
                    "8. latency at the same rate (half of RabbitMQ's peak)",
                    text(&same),
                    text(&r),
                    ratio(same.p99_us, r.p99_us),
                    "p99 <= 1 ms",
                );
            }
        }
        for (scenario, name) in [
            (
                9,
                "9. restart with 1M persistent messages: start to first delivery",
            ),
            (
                15,
                "15. restart with 1M x 16 B in a quorum queue: start to first delivery",
            ),
        ] {
            let restart = |figures: &[Figure]| {
                figures.iter().find_map(|figure| match figure {
                    Figure::Restart {
                        scenario: of,
                        empty_boot,
                        served,
                    } if *of == scenario => Some((*empty_boot, *served)),
                    _ => None,
                })
            };
            if let (Some(w), Some(r)) = (restart(&self.warren), restart(&self.rabbitmq)) {
                let shown = |(empty, served): (Duration, Duration)| {
                    format!(
                        "{:.2} s (empty: {:.2} s)",
                        served.as_secs_f64(),
                        empty.as_secs_f64()
                    )
                };
                row(
                    name,
                    shown(w),
                    shown(r),
                    ratio(w.1.as_secs_f64(), r.1.as_secs_f64()),
                    "<= 0.20x",
                );
            }
        }
        let quorum_backlog = |figures: &[Figure]| {
            figures.iter().find_map(|figure| match figure {
                Figure::QuorumBacklog {
                    before,
                    loaded,
                    publish_rate,
                } => Some((*before, *loaded, *publish_rate)),
                _ => None,
            })
        };
        if let (Some(w), Some(r)) = (quorum_backlog(&self.warren), quorum_backlog(&self.rabbitmq)) {
            let per_message =
                |(before, loaded, _): (u64, u64, f64)| loaded.saturating_sub(before) as f64 / 1e6;
            row(
                "13. quorum queue, 3 nodes, 1M x 16 B: RSS per queued message (all nodes)",
                format!("{:.0} B", per_message(w)),
                format!("{:.0} B", per_message(r)),
                ratio(per_message(w), per_message(r)),
                "<= 0.10x",
            );
            row(
                "13. RSS before / loaded (all nodes); publish rate with confirms",
                format!("{} / {}; {}", mib(w.0), mib(w.1), rate(w.2)),
                format!("{} / {}; {}", mib(r.0), mib(r.1), rate(r.2)),
                String::new(),
                "",
            );
        }
        let quorum_idle = |figures: &[Figure]| {
            figures.iter().find_map(|figure| match figure {
                Figure::QuorumIdle {
                    declared,
                    added,
                    cpu_percent,
                } => Some((*declared, *added, *cpu_percent)),
                _ => None,
            })
        };
        if let (Some(w), Some(r)) = (quorum_idle(&self.warren), quorum_idle(&self.rabbitmq)) {
            row(
                "14. 1,000 idle quorum queues, 3 nodes: CPU of the idle cluster",
                format!("{:.1}% of a core", w.2),
                format!("{:.1}% of a core", r.2),
                ratio(w.2, r.2),
                "",
            );
            row(
                "14. RSS added (all nodes); time to declare them",
                format!("{}; {:.1} s", mib(w.1), w.0.as_secs_f64()),
                format!("{}; {:.1} s", mib(r.1), r.0.as_secs_f64()),
                ratio(w.1 as f64, r.1 as f64),
                "",
            );
        }
        let base = |figures: &[Figure]| {
            figures.iter().find_map(|figure| match figure {
                Figure::BaseRss(bytes) => Some(*bytes),
                _ => None,
            })
        };
        if let (Some(w), Some(r)) = (base(&self.warren), base(&self.rabbitmq)) {
            row(
                "RSS of a freshly started node",
                mib(w),
                mib(r),
                ratio(w as f64, r as f64),
                "",
            );
        }
        let perf_cpu = self
            .warren
            .iter()
            .chain(&self.rabbitmq)
            .filter_map(|figure| match figure {
                Figure::Rate(_, result) => Some(result.perf_cpu_percent),
                _ => None,
            })
            .fold(0.0f64, f64::max);
        let mut text = String::new();
        text.push_str(&format!(
            "Machine: {}. {} vs {}; {} s per scenario; the whole run took {:.0} s.\n",
            brokers::machine(),
            self.versions.0,
            self.versions.1,
            self.seconds,
            took.as_secs_f64()
        ));
        text.push_str(
            "Command: `cargo build --release --workspace --bins && target/release/compare --write docs/benchmarks.md`\n\n",
        );
        text.push_str("| scenario | Warren | RabbitMQ | Warren / RabbitMQ | target |\n|---|---|---|---|---|\n");
        for [name, warren, rabbitmq, ratio, target] in rows {
            text.push_str(&format!(
                "| {name} | {warren} | {rabbitmq} | {ratio} | {target} |\n"
            ));
        }
        text.push_str(&format!(
            "\nwarren-perf used at most {perf_cpu:.0}% of one core in any scenario (it shares the machine's cores with the broker).\n"
        ));
        text
    }
}
