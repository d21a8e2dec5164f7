//! Exchanges of a vhost: declaration through the metadata log, the equivalence check of a
//! redeclaration, deletion with the bindings from and to them.

use std::sync::Arc;

use warren_wire::ShortString;

use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{DestinationKey, Exchange, ExchangeKind};
use crate::queue::{self};
use crate::store::metadata::MetadataCommand;
use crate::store::model::{ExchangeRecord, decode_table, encode_table};

use super::equivalence::{compare_argument, quoted};
use super::{ExchangeSpec, VHost};

impl VHost {
    /// Declares an exchange through the metadata log, or checks that an existing one is
    /// equivalent. Returns once the exchange exists on this node.
    pub async fn declare_exchange(&self, spec: ExchangeSpec) -> Result<Arc<Exchange>, AmqpError> {
        if let Some(existing) = self.exchange(&spec.name) {
            self.check_exchange_equivalence(&existing, &spec)?;
            return Ok(existing);
        }
        if spec.name.starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        queue::arguments::check_alternate_exchange(&spec.arguments, &spec.name, &self.name)?;
        self.propose(MetadataCommand::DeclareExchange {
            vhost: self.name.to_string(),
            name: spec.name.to_vec(),
            kind: spec.kind.name().to_string(),
            durable: spec.durable,
            home: self.node.to_string(),
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            arguments: encode_table(&spec.arguments),
        })
        .await?;
        // Whoever declared it first, it must be equivalent to what was asked.
        let existing = self
            .exchange(&spec.name)
            .ok_or_else(|| AmqpError::no_exchange(&spec.name, &self.name))?;
        self.check_exchange_equivalence(&existing, &spec)?;
        Ok(existing)
    }

    /// Recreates an exchange from the metadata (at start, or when another node declared it).
    pub(crate) fn restore_exchange(
        &self,
        name: &[u8],
        record: &ExchangeRecord,
    ) -> Result<(), String> {
        let name = ShortString::try_from(name).map_err(|error| error.to_string())?;
        let kind = ExchangeKind::parse(record.kind.as_bytes())
            .ok_or_else(|| format!("unknown exchange type '{}'", record.kind))?;
        let exchange = Exchange::new(
            name.clone(),
            kind,
            record.durable,
            record.auto_delete,
            record.internal,
            decode_table(&record.arguments)?,
        );
        self.exchanges
            .write()
            .entry(name)
            .or_insert_with(|| Arc::new(exchange));
        Ok(())
    }

    fn check_exchange_equivalence(
        &self,
        existing: &Exchange,
        spec: &ExchangeSpec,
    ) -> Result<(), AmqpError> {
        let resource = format!("exchange '{}' in vhost '{}'", spec.name, self.name);
        let mismatch = |key: &str, received: String, current: String| {
            AmqpError::precondition_failed(format!(
                "inequivalent arg '{key}' for {resource}: received {received} but current is {current}"
            ))
        };
        if existing.kind != spec.kind {
            return Err(mismatch(
                "type",
                quoted(spec.kind.name()),
                quoted(existing.kind.name()),
            ));
        }
        for (key, received, current) in [
            ("durable", spec.durable, existing.durable),
            ("auto_delete", spec.auto_delete, existing.auto_delete),
            ("internal", spec.internal, existing.internal),
        ] {
            if received != current {
                return Err(mismatch(key, quoted(received), quoted(current)));
            }
        }
        compare_argument(
            "alternate-exchange",
            &spec.arguments,
            &existing.arguments,
            &resource,
        )
    }

    /// Deletes an exchange and every binding from or to it; missing exchanges are fine.
    pub async fn delete_exchange(&self, name: &ShortString, if_unused: bool) -> AmqpResult<()> {
        {
            let Some(exchange) = self.exchange(name) else {
                return Ok(());
            };
            if if_unused && exchange.has_bindings() {
                return Err(AmqpError::precondition_failed(format!(
                    "exchange '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
        }
        self.propose(MetadataCommand::DeleteExchange {
            vhost: self.name.to_string(),
            name: name.to_vec(),
        })
        .await
    }

    /// Removes exchanges from memory with the bindings to them; exchanges that lose their last
    /// binding that way and are auto-delete go too. With `only_unused_auto_delete`, a name is
    /// removed only if it is an auto-delete exchange with no bindings left. Mirrors what the
    /// metadata state does for the same command. Call with `changes` held.
    pub(super) fn remove_exchanges(
        &self,
        mut names: Vec<ShortString>,
        only_unused_auto_delete: bool,
    ) {
        let mut only_unused = only_unused_auto_delete;
        while !names.is_empty() {
            let mut next = Vec::new();
            let mut exchanges = self.exchanges.write();
            for name in names.drain(..) {
                let removable = exchanges.get(&name).is_some_and(|exchange| {
                    !only_unused || (exchange.auto_delete && !exchange.has_bindings())
                });
                if !removable {
                    continue;
                }
                exchanges.remove(&name);
                let key = DestinationKey::Exchange(name);
                for other in exchanges.values() {
                    if other.unbind_destination(&key) > 0
                        && other.auto_delete
                        && !other.has_bindings()
                    {
                        next.push(other.name.clone());
                    }
                }
            }
            names = next;
            only_unused = true;
        }
    }
}
