//! A message's dead-letter history: why and where it died, as `x-death` reports it.
//!
//! Kept beside the message (not read back from headers a client sent), most recent death first,
//! one entry per (queue, reason) whose count grows and which moves to the front when it happens
//! again. Queues write it; the dead-letter copy turns it into headers.

use warren_wire::ShortString;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reason {
    /// `basic.reject` / `basic.nack` without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// The queue was over its length limit.
    Maxlen,
    /// Delivered too many times (quorum queues).
    DeliveryLimit,
}

impl Reason {
    /// Its code in stored records.
    pub(crate) fn code(self) -> u8 {
        match self {
            Reason::Rejected => 1,
            Reason::Expired => 2,
            Reason::Maxlen => 3,
            Reason::DeliveryLimit => 4,
        }
    }

    /// The reason a stored code stands for.
    pub(crate) fn from_code(code: u8) -> Option<Reason> {
        Some(match code {
            1 => Reason::Rejected,
            2 => Reason::Expired,
            3 => Reason::Maxlen,
            4 => Reason::DeliveryLimit,
            _ => return None,
        })
    }

    /// The name in `x-death`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// One (queue, reason) entry of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The queue the message died in.
    pub queue: ShortString,
    /// Why.
    pub reason: Reason,
    /// How many times, for this queue and reason.
    pub count: u64,
    /// Seconds since the epoch of the first time.
    pub time: u64,
    /// The exchange the message had been published to before that first death.
    pub exchange: ShortString,
    /// Its routing keys then (CC included, BCC not).
    pub routing_keys: Vec<ShortString>,
    /// Its per-message TTL then, if it had one.
    pub original_expiration: Option<ShortString>,
}

/// A message's dead-letter history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deaths {
    /// Most recent first.
    pub entries: Vec<Death>,
    /// (reason, queue, exchange) of the very first death.
    pub first: (Reason, ShortString, ShortString),
}
