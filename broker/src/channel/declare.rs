//! Exchanges, queues and bindings: `exchange.*` and `queue.*` methods, with RabbitMQ's checks in
//! RabbitMQ's order (type, default exchange, reserved names, permissions, existence, exclusive
//! locks, equivalence).

use warren_wire::method::{
    ExchangeBind, ExchangeBindOk, ExchangeDeclare, ExchangeDeclareOk, ExchangeDelete,
    ExchangeDeleteOk, ExchangeUnbind, ExchangeUnbindOk, QueueBind, QueueBindOk, QueueDeclare,
    QueueDeclareOk, QueueDelete, QueueDeleteOk, QueuePurge, QueuePurgeOk, QueueUnbind,
    QueueUnbindOk,
};
use warren_wire::{FieldValue, Method, ShortString};

use super::Channel;
use crate::auth::{Access, ResourceKind};
use crate::connection::context::Context;
use crate::direct_reply::{self, DirectReplies};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, ExchangeKind};
use crate::names;
use crate::queue::{QueueCommand, QueueSpec, QueueStats};
use crate::vhost::ExchangeSpec;

/// Direct reply-to addresses are not queues: nothing can be bound to them.
fn refuse_volatile(name: &ShortString) -> AmqpResult<()> {
    if name.as_bytes() == direct_reply::PSEUDO_QUEUE.as_bytes() || DirectReplies::is_address(name) {
        return Err(AmqpError::access_refused(
            "cannot bind or unbind to a volatile (direct reply-to) queue",
        ));
    }
    Ok(())
}

fn default_exchange_refused() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

impl Channel {
    pub(super) async fn exchange_declare(
        &mut self,
        ctx: &mut Context,
        declare: ExchangeDeclare,
    ) -> AmqpResult<()> {
        if declare.passive {
            if declare.exchange.is_empty() {
                return Err(default_exchange_refused());
            }
            ctx.vhost
                .exchange(&declare.exchange)
                .ok_or_else(|| AmqpError::no_exchange(&declare.exchange, ctx.vhost.name()))?;
        } else {
            let kind = ExchangeKind::parse(&declare.kind).ok_or_else(|| {
                AmqpError::precondition_failed(format!("unknown exchange type '{}'", declare.kind))
            })?;
            if declare.exchange.is_empty() {
                return Err(default_exchange_refused());
            }
            self.check(
                ctx,
                Access::Configure,
                ResourceKind::Exchange,
                &declare.exchange,
            )?;
            if let Some(FieldValue::LongString(alternate)) =
                declare.arguments.get("alternate-exchange")
            {
                let alternate = ShortString::try_from(alternate.as_bytes()).unwrap_or_default();
                self.check(ctx, Access::Read, ResourceKind::Exchange, &declare.exchange)?;
                self.check(ctx, Access::Write, ResourceKind::Exchange, &alternate)?;
            }
            ctx.vhost
                .declare_exchange(ExchangeSpec {
                    name: declare.exchange,
                    kind,
                    durable: declare.durable,
                    auto_delete: declare.auto_delete,
                    internal: declare.internal,
                    arguments: declare.arguments,
                })
                .await?;
        }
        if !declare.no_wait {
            ctx.out.method(
                self.number(),
                &Method::ExchangeDeclareOk(ExchangeDeclareOk {}),
            );
        }
        Ok(())
    }

    pub(super) async fn exchange_delete(
        &mut self,
        ctx: &mut Context,
        delete: ExchangeDelete,
    ) -> AmqpResult<()> {
        if delete.exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        if delete.exchange.starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{}' in vhost '{}' not allowed",
                delete.exchange,
                ctx.vhost.name()
            )));
        }
        self.check(
            ctx,
            Access::Configure,
            ResourceKind::Exchange,
            &delete.exchange,
        )?;
        ctx.vhost
            .delete_exchange(&delete.exchange, delete.if_unused)
            .await?;
        if !delete.no_wait {
            ctx.out.method(
                self.number(),
                &Method::ExchangeDeleteOk(ExchangeDeleteOk {}),
            );
        }
        Ok(())
    }

    pub(super) async fn exchange_bind(
        &mut self,
        ctx: &mut Context,
        bind: ExchangeBind,
    ) -> AmqpResult<()> {
        self.check(
            ctx,
            Access::Write,
            ResourceKind::Exchange,
            &bind.destination,
        )?;
        if bind.source.is_empty() || bind.destination.is_empty() {
            return Err(default_exchange_refused());
        }
        self.check(ctx, Access::Read, ResourceKind::Exchange, &bind.source)?;
        let source = ctx
            .vhost
            .exchange(&bind.source)
            .ok_or_else(|| AmqpError::no_exchange(&bind.source, ctx.vhost.name()))?;
        ctx.vhost
            .exchange(&bind.destination)
            .ok_or_else(|| AmqpError::no_exchange(&bind.destination, ctx.vhost.name()))?;
        ctx.vhost
            .bind(
                &source,
                Destination::Exchange(bind.destination),
                bind.routing_key,
                bind.arguments,
            )
            .await?;
        if !bind.no_wait {
            ctx.out
                .method(self.number(), &Method::ExchangeBindOk(ExchangeBindOk {}));
        }
        Ok(())
    }

    pub(super) async fn exchange_unbind(
        &mut self,
        ctx: &mut Context,
        unbind: ExchangeUnbind,
    ) -> AmqpResult<()> {
        self.check(
            ctx,
            Access::Write,
            ResourceKind::Exchange,
            &unbind.destination,
        )?;
        if unbind.source.is_empty() || unbind.destination.is_empty() {
            return Err(default_exchange_refused());
        }
        self.check(ctx, Access::Read, ResourceKind::Exchange, &unbind.source)?;
        // Missing exchanges or bindings are not errors (RabbitMQ 4).
        if let Some(source) = ctx.vhost.exchange(&unbind.source) {
            ctx.vhost
                .unbind(
                    &source,
                    &Destination::Exchange(unbind.destination),
                    &unbind.routing_key,
                    &unbind.arguments,
                )
                .await?;
        }
        if !unbind.no_wait {
            ctx.out.method(
                self.number(),
                &Method::ExchangeUnbindOk(ExchangeUnbindOk {}),
            );
        }
        Ok(())
    }

    pub(super) async fn queue_declare(
        &mut self,
        ctx: &mut Context,
        declare: QueueDeclare,
    ) -> AmqpResult<()> {
        // The direct reply-to pseudo-queue and reply addresses: one consumer, no messages.
        if declare.queue.as_bytes() == direct_reply::PSEUDO_QUEUE.as_bytes()
            || (DirectReplies::is_address(&declare.queue)
                && ctx.broker.direct_replies.lookup(&declare.queue).is_some())
        {
            let stats = QueueStats {
                messages: 0,
                consumers: 1,
            };
            return self.declare_ok(ctx, declare.queue, stats, declare.no_wait);
        }
        if DirectReplies::is_address(&declare.queue) {
            return Err(AmqpError::no_queue(&declare.queue, ctx.vhost.name()));
        }
        if declare.passive {
            let queue = self.usable_queue(ctx, &declare.queue)?;
            let stats = queue
                .ask(|reply| QueueCommand::Stats {
                    renew: !declare.no_wait,
                    reply,
                })
                .await
                .ok_or_else(|| queue.unavailable())?;
            self.last_queue = Some(declare.queue.clone());
            return self.declare_ok(ctx, declare.queue, stats, declare.no_wait);
        }
        let name = if declare.queue.is_empty() {
            names::queue_name()
        } else {
            if declare.queue.starts_with(b"amq.") {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    declare.queue
                )));
            }
            declare.queue
        };
        self.check(ctx, Access::Configure, ResourceKind::Queue, &name)?;
        if let Some(FieldValue::LongString(dlx)) = declare.arguments.get("x-dead-letter-exchange") {
            // Dead-lettering reads from this queue and writes to that exchange, as in RabbitMQ.
            let dlx = ShortString::try_from(dlx.as_bytes()).unwrap_or_default();
            let dlx = if dlx.is_empty() {
                ShortString::from_static("amq.default")
            } else {
                dlx
            };
            self.check(ctx, Access::Read, ResourceKind::Queue, &name)?;
            self.check(ctx, Access::Write, ResourceKind::Exchange, &dlx)?;
        }
        let mut arguments = declare.arguments;
        // `default_queue_type = quorum` (the node's or the vhost's): a queue declared without a type is a quorum queue
        // when it can be one, else classic (as RabbitMQ 4 falls back); the type goes into its
        // arguments, so that a redeclaration compares alike.
        // The vhost's default queue type, when it has one, wins over the node's.
        let default_quorum = match ctx.vhost.metadata().default_queue_type.as_deref() {
            Some(kind) => kind == "quorum",
            None => ctx.broker.config.default_queue_type == warren_config::QueueType::Quorum,
        };
        if default_quorum
            && arguments.get("x-queue-type").is_none()
            && declare.durable
            && !declare.exclusive
            && !declare.auto_delete
        {
            arguments.insert(
                ShortString::from_static("x-queue-type"),
                FieldValue::LongString(b"quorum".to_vec().into()),
            );
        }
        let spec = QueueSpec {
            name: name.clone(),
            // Exclusive queues never survive their connection, so never a restart.
            durable: declare.durable && !declare.exclusive,
            exclusive_owner: declare.exclusive.then_some(ctx.id),
            auto_delete: declare.auto_delete,
            arguments,
        };
        let (queue, created) = ctx.vhost.declare_queue(spec, ctx.id).await?;
        let stats = if created {
            if declare.exclusive {
                ctx.exclusive_queues.push(queue.clone());
            }
            QueueStats {
                messages: 0,
                consumers: 0,
            }
        } else {
            queue
                .ask(|reply| QueueCommand::Stats {
                    renew: !declare.no_wait,
                    reply,
                })
                .await
                .ok_or_else(|| queue.unavailable())?
        };
        self.last_queue = Some(name.clone());
        self.declare_ok(ctx, name, stats, declare.no_wait)
    }

    fn declare_ok(
        &mut self,
        ctx: &mut Context,
        queue: ShortString,
        stats: QueueStats,
        no_wait: bool,
    ) -> AmqpResult<()> {
        if !no_wait {
            let declare_ok = QueueDeclareOk {
                queue,
                message_count: stats.messages,
                consumer_count: stats.consumers,
            };
            ctx.out
                .method(self.number(), &Method::QueueDeclareOk(declare_ok));
        }
        Ok(())
    }

    pub(super) async fn queue_bind(
        &mut self,
        ctx: &mut Context,
        bind: QueueBind,
    ) -> AmqpResult<()> {
        let name = self.queue_name(&bind.queue)?;
        refuse_volatile(&name)?;
        let routing_key = if bind.queue.is_empty() && bind.routing_key.is_empty() {
            name.clone()
        } else {
            bind.routing_key
        };
        self.check(ctx, Access::Write, ResourceKind::Queue, &name)?;
        if bind.exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        self.check(ctx, Access::Read, ResourceKind::Exchange, &bind.exchange)?;
        let exchange = ctx
            .vhost
            .exchange(&bind.exchange)
            .ok_or_else(|| AmqpError::no_exchange(&bind.exchange, ctx.vhost.name()))?;
        let queue = self.usable_queue(ctx, &name)?;
        ctx.vhost
            .bind(
                &exchange,
                Destination::Queue(queue),
                routing_key,
                bind.arguments,
            )
            .await?;
        if !bind.no_wait {
            ctx.out
                .method(self.number(), &Method::QueueBindOk(QueueBindOk {}));
        }
        Ok(())
    }

    pub(super) async fn queue_unbind(
        &mut self,
        ctx: &mut Context,
        unbind: QueueUnbind,
    ) -> AmqpResult<()> {
        let name = self.queue_name(&unbind.queue)?;
        refuse_volatile(&name)?;
        let routing_key = if unbind.queue.is_empty() && unbind.routing_key.is_empty() {
            name.clone()
        } else {
            unbind.routing_key
        };
        self.check(ctx, Access::Write, ResourceKind::Queue, &name)?;
        if unbind.exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        self.check(ctx, Access::Read, ResourceKind::Exchange, &unbind.exchange)?;
        // Missing queues, exchanges and bindings are not errors (RabbitMQ 4).
        if let (Some(exchange), Some(queue)) =
            (ctx.vhost.exchange(&unbind.exchange), ctx.vhost.queue(&name))
        {
            if queue.is_locked_for(ctx.id) {
                return Err(AmqpError::exclusive_locked(&name, ctx.vhost.name()));
            }
            ctx.vhost
                .unbind(
                    &exchange,
                    &Destination::Queue(queue),
                    &routing_key,
                    &unbind.arguments,
                )
                .await?;
        }
        ctx.out
            .method(self.number(), &Method::QueueUnbindOk(QueueUnbindOk {}));
        Ok(())
    }

    pub(super) async fn queue_purge(
        &mut self,
        ctx: &mut Context,
        purge: QueuePurge,
    ) -> AmqpResult<()> {
        let name = self.queue_name(&purge.queue)?;
        let queue = self.usable_queue(ctx, &name)?;
        self.check(ctx, Access::Read, ResourceKind::Queue, &name)?;
        let purged = queue
            .ask(|reply| QueueCommand::Purge { reply })
            .await
            .ok_or_else(|| queue.unavailable())?;
        if !purge.no_wait {
            ctx.out.method(
                self.number(),
                &Method::QueuePurgeOk(QueuePurgeOk {
                    message_count: purged,
                }),
            );
        }
        Ok(())
    }

    pub(super) async fn queue_delete(
        &mut self,
        ctx: &mut Context,
        delete: QueueDelete,
    ) -> AmqpResult<()> {
        let name = self.queue_name(&delete.queue)?;
        let mut deleted = 0;
        if let Some(queue) = ctx.vhost.queue(&name) {
            if queue.is_locked_for(ctx.id) {
                return Err(AmqpError::exclusive_locked(&name, ctx.vhost.name()));
            }
            self.check(ctx, Access::Configure, ResourceKind::Queue, &name)?;
            let result = queue
                .ask(|reply| QueueCommand::Delete {
                    if_unused: delete.if_unused,
                    if_empty: delete.if_empty,
                    reply,
                })
                .await;
            // No answer: it was deleted meanwhile, which is what was asked.
            if let Some(result) = result {
                deleted = result?;
            }
            ctx.exclusive_queues
                .retain(|owned| owned.id() != queue.id());
        }
        if !delete.no_wait {
            ctx.out.method(
                self.number(),
                &Method::QueueDeleteOk(QueueDeleteOk {
                    message_count: deleted,
                }),
            );
        }
        Ok(())
    }
}
