//! Every method of the connection, channel, access, exchange, queue, basic, confirm and tx classes,
//! in both directions.
//!
//! Each method is a plain struct whose fields are its arguments in wire order (reserved arguments
//! included, so a method re-encodes to the bytes it was read from); [`Method`] is the enum of them
//! all. One table below defines everything: the struct, its ids, its name as RabbitMQ prints it
//! (`queue.declare`), and its decoder and encoder.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::types::{Argument, FieldTable, LongString, ShortString};

macro_rules! methods {
    ($(
        $(#[$meta:meta])*
        $name:ident = ($class_id:literal, $method_id:literal, $text:literal) {
            $( $(#[$field_meta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, PartialEq, Default)]
            pub struct $name {
                $( $(#[$field_meta])* pub $field: $ty, )*
            }

            impl $name {
                /// The class id.
                pub const CLASS_ID: u16 = $class_id;
                /// The method id.
                pub const METHOD_ID: u16 = $method_id;

                #[allow(unused_variables)]
                fn read_arguments(reader: &mut Reader) -> Result<Self, DecodeError> {
                    Ok($name { $( $field: <$ty as Argument>::read_argument(reader)?, )* })
                }

                #[allow(unused_variables)]
                fn write_arguments(&self, writer: &mut Writer<'_>) {
                    $( Argument::write_argument(&self.$field, writer); )*
                }
            }

            #[cfg(test)]
            impl crate::test_random::Random for $name {
                #[allow(unused_variables)]
                fn random(rng: &mut crate::test_random::TestRandom) -> Self {
                    $name { $( $field: crate::test_random::Random::random(rng), )* }
                }
            }

            impl From<$name> for Method {
                fn from(method: $name) -> Method {
                    Method::$name(method)
                }
            }
        )*

        /// Any AMQP 0-9-1 method.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $( $(#[$meta])* $name($name), )*
        }

        /// One generator per method, for property tests.
        #[cfg(test)]
        pub(crate) fn random_method_generators() -> Vec<fn(&mut crate::test_random::TestRandom) -> Method> {
            vec![ $( |rng| Method::$name(crate::test_random::Random::random(rng)), )* ]
        }

        impl Method {
            /// The class and method ids.
            pub fn ids(&self) -> (u16, u16) {
                match self {
                    $( Method::$name(_) => ($class_id, $method_id), )*
                }
            }

            /// The method's name as RabbitMQ prints it, such as `queue.declare`.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Method::$name(_) => $text, )*
                }
            }

            /// The name of the method with these ids, if any.
            pub fn name_of(class_id: u16, method_id: u16) -> Option<&'static str> {
                match (class_id, method_id) {
                    $( ($class_id, $method_id) => Some($text), )*
                    _ => None,
                }
            }

            /// Decodes a method frame payload: class id, method id, arguments.
            pub fn decode(payload: Bytes) -> Result<Method, DecodeError> {
                let mut reader = Reader::new(payload);
                let class_id = reader.u16("class id")?;
                let method_id = reader.u16("method id")?;
                let (method, name) = match (class_id, method_id) {
                    $( ($class_id, $method_id) => (Method::$name($name::read_arguments(&mut reader)?), $text), )*
                    _ => return Err(DecodeError::UnknownMethod { class_id, method_id }),
                };
                reader.finish(name)?;
                Ok(method)
            }

            /// Appends the method frame payload (ids and arguments) to `buf`.
            pub fn encode(&self, buf: &mut BytesMut) {
                let (class_id, method_id) = self.ids();
                buf.put_u16(class_id);
                buf.put_u16(method_id);
                let mut writer = Writer::new(buf);
                match self {
                    $( Method::$name(method) => method.write_arguments(&mut writer), )*
                }
            }
        }
    };
}

methods! {
    /// connection.start: the server's greeting.
    ConnectionStart = (10, 10, "connection.start") {
        version_major: u8,
        version_minor: u8,
        server_properties: FieldTable,
        mechanisms: LongString,
        locales: LongString,
    }
    /// connection.start-ok: the client's properties and SASL response.
    ConnectionStartOk = (10, 11, "connection.start_ok") {
        client_properties: FieldTable,
        mechanism: ShortString,
        response: LongString,
        locale: ShortString,
    }
    /// connection.secure: a SASL challenge.
    ConnectionSecure = (10, 20, "connection.secure") {
        challenge: LongString,
    }
    /// connection.secure-ok: a SASL response.
    ConnectionSecureOk = (10, 21, "connection.secure_ok") {
        response: LongString,
    }
    /// connection.tune: the server's limits.
    ConnectionTune = (10, 30, "connection.tune") {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    }
    /// connection.tune-ok: the limits the client chose.
    ConnectionTuneOk = (10, 31, "connection.tune_ok") {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    }
    /// connection.open: the virtual host to use.
    ConnectionOpen = (10, 40, "connection.open") {
        virtual_host: ShortString,
        capabilities: ShortString,
        insist: bool,
    }
    /// connection.open-ok.
    ConnectionOpenOk = (10, 41, "connection.open_ok") {
        known_hosts: ShortString,
    }
    /// connection.close: either side ends the connection.
    ConnectionClose = (10, 50, "connection.close") {
        reply_code: u16,
        reply_text: ShortString,
        class_id: u16,
        method_id: u16,
    }
    /// connection.close-ok.
    ConnectionCloseOk = (10, 51, "connection.close_ok") {}
    /// connection.blocked (RabbitMQ extension): publishing is blocked by an alarm.
    ConnectionBlocked = (10, 60, "connection.blocked") {
        reason: ShortString,
    }
    /// connection.unblocked (RabbitMQ extension).
    ConnectionUnblocked = (10, 61, "connection.unblocked") {}
    /// connection.update-secret (RabbitMQ extension): new credentials for a live connection.
    ConnectionUpdateSecret = (10, 70, "connection.update_secret") {
        new_secret: LongString,
        reason: ShortString,
    }
    /// connection.update-secret-ok.
    ConnectionUpdateSecretOk = (10, 71, "connection.update_secret_ok") {}

    /// channel.open.
    ChannelOpen = (20, 10, "channel.open") {
        out_of_band: ShortString,
    }
    /// channel.open-ok.
    ChannelOpenOk = (20, 11, "channel.open_ok") {
        channel_id: LongString,
    }
    /// channel.flow: pause or resume deliveries.
    ChannelFlow = (20, 20, "channel.flow") {
        active: bool,
    }
    /// channel.flow-ok.
    ChannelFlowOk = (20, 21, "channel.flow_ok") {
        active: bool,
    }
    /// channel.close.
    ChannelClose = (20, 40, "channel.close") {
        reply_code: u16,
        reply_text: ShortString,
        class_id: u16,
        method_id: u16,
    }
    /// channel.close-ok.
    ChannelCloseOk = (20, 41, "channel.close_ok") {}

    /// access.request (deprecated; answered for old clients).
    AccessRequest = (30, 10, "access.request") {
        realm: ShortString,
        exclusive: bool,
        passive: bool,
        active: bool,
        write: bool,
        read: bool,
    }
    /// access.request-ok.
    AccessRequestOk = (30, 11, "access.request_ok") {
        ticket: u16,
    }

    /// exchange.declare.
    ExchangeDeclare = (40, 10, "exchange.declare") {
        ticket: u16,
        exchange: ShortString,
        kind: ShortString,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        no_wait: bool,
        arguments: FieldTable,
    }
    /// exchange.declare-ok.
    ExchangeDeclareOk = (40, 11, "exchange.declare_ok") {}
    /// exchange.delete.
    ExchangeDelete = (40, 20, "exchange.delete") {
        ticket: u16,
        exchange: ShortString,
        if_unused: bool,
        no_wait: bool,
    }
    /// exchange.delete-ok.
    ExchangeDeleteOk = (40, 21, "exchange.delete_ok") {}
    /// exchange.bind (RabbitMQ extension): exchange-to-exchange binding.
    ExchangeBind = (40, 30, "exchange.bind") {
        ticket: u16,
        destination: ShortString,
        source: ShortString,
        routing_key: ShortString,
        no_wait: bool,
        arguments: FieldTable,
    }
    /// exchange.bind-ok.
    ExchangeBindOk = (40, 31, "exchange.bind_ok") {}
    /// exchange.unbind (RabbitMQ extension).
    ExchangeUnbind = (40, 40, "exchange.unbind") {
        ticket: u16,
        destination: ShortString,
        source: ShortString,
        routing_key: ShortString,
        no_wait: bool,
        arguments: FieldTable,
    }
    /// exchange.unbind-ok.
    ExchangeUnbindOk = (40, 51, "exchange.unbind_ok") {}

    /// queue.declare.
    QueueDeclare = (50, 10, "queue.declare") {
        ticket: u16,
        queue: ShortString,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        no_wait: bool,
        arguments: FieldTable,
    }
    /// queue.declare-ok.
    QueueDeclareOk = (50, 11, "queue.declare_ok") {
        queue: ShortString,
        message_count: u32,
        consumer_count: u32,
    }
    /// queue.bind.
    QueueBind = (50, 20, "queue.bind") {
        ticket: u16,
        queue: ShortString,
        exchange: ShortString,
        routing_key: ShortString,
        no_wait: bool,
        arguments: FieldTable,
    }
    /// queue.bind-ok.
    QueueBindOk = (50, 21, "queue.bind_ok") {}
    /// queue.purge.
    QueuePurge = (50, 30, "queue.purge") {
        ticket: u16,
        queue: ShortString,
        no_wait: bool,
    }
    /// queue.purge-ok.
    QueuePurgeOk = (50, 31, "queue.purge_ok") {
        message_count: u32,
    }
    /// queue.delete.
    QueueDelete = (50, 40, "queue.delete") {
        ticket: u16,
        queue: ShortString,
        if_unused: bool,
        if_empty: bool,
        no_wait: bool,
    }
    /// queue.delete-ok.
    QueueDeleteOk = (50, 41, "queue.delete_ok") {
        message_count: u32,
    }
    /// queue.unbind (no no-wait argument, by the specification).
    QueueUnbind = (50, 50, "queue.unbind") {
        ticket: u16,
        queue: ShortString,
        exchange: ShortString,
        routing_key: ShortString,
        arguments: FieldTable,
    }
    /// queue.unbind-ok.
    QueueUnbindOk = (50, 51, "queue.unbind_ok") {}

    /// basic.qos.
    BasicQos = (60, 10, "basic.qos") {
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    }
    /// basic.qos-ok.
    BasicQosOk = (60, 11, "basic.qos_ok") {}
    /// basic.consume.
    BasicConsume = (60, 20, "basic.consume") {
        ticket: u16,
        queue: ShortString,
        consumer_tag: ShortString,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        no_wait: bool,
        arguments: FieldTable,
    }
    /// basic.consume-ok.
    BasicConsumeOk = (60, 21, "basic.consume_ok") {
        consumer_tag: ShortString,
    }
    /// basic.cancel (from either side; the server's is RabbitMQ's consumer cancel notification).
    BasicCancel = (60, 30, "basic.cancel") {
        consumer_tag: ShortString,
        no_wait: bool,
    }
    /// basic.cancel-ok.
    BasicCancelOk = (60, 31, "basic.cancel_ok") {
        consumer_tag: ShortString,
    }
    /// basic.publish (followed by content).
    BasicPublish = (60, 40, "basic.publish") {
        ticket: u16,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        immediate: bool,
    }
    /// basic.return (followed by content).
    BasicReturn = (60, 50, "basic.return") {
        reply_code: u16,
        reply_text: ShortString,
        exchange: ShortString,
        routing_key: ShortString,
    }
    /// basic.deliver (followed by content).
    BasicDeliver = (60, 60, "basic.deliver") {
        consumer_tag: ShortString,
        delivery_tag: u64,
        redelivered: bool,
        exchange: ShortString,
        routing_key: ShortString,
    }
    /// basic.get.
    BasicGet = (60, 70, "basic.get") {
        ticket: u16,
        queue: ShortString,
        no_ack: bool,
    }
    /// basic.get-ok (followed by content).
    BasicGetOk = (60, 71, "basic.get_ok") {
        delivery_tag: u64,
        redelivered: bool,
        exchange: ShortString,
        routing_key: ShortString,
        message_count: u32,
    }
    /// basic.get-empty.
    BasicGetEmpty = (60, 72, "basic.get_empty") {
        cluster_id: ShortString,
    }
    /// basic.ack (from either side; the server's confirms a publish).
    BasicAck = (60, 80, "basic.ack") {
        delivery_tag: u64,
        multiple: bool,
    }
    /// basic.reject.
    BasicReject = (60, 90, "basic.reject") {
        delivery_tag: u64,
        requeue: bool,
    }
    /// basic.recover-async (deprecated).
    BasicRecoverAsync = (60, 100, "basic.recover_async") {
        requeue: bool,
    }
    /// basic.recover.
    BasicRecover = (60, 110, "basic.recover") {
        requeue: bool,
    }
    /// basic.recover-ok.
    BasicRecoverOk = (60, 111, "basic.recover_ok") {}
    /// basic.nack (RabbitMQ extension; from either side).
    BasicNack = (60, 120, "basic.nack") {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    }

    /// confirm.select (RabbitMQ extension): publisher confirms.
    ConfirmSelect = (85, 10, "confirm.select") {
        no_wait: bool,
    }
    /// confirm.select-ok.
    ConfirmSelectOk = (85, 11, "confirm.select_ok") {}

    /// tx.select.
    TxSelect = (90, 10, "tx.select") {}
    /// tx.select-ok.
    TxSelectOk = (90, 11, "tx.select_ok") {}
    /// tx.commit.
    TxCommit = (90, 20, "tx.commit") {}
    /// tx.commit-ok.
    TxCommitOk = (90, 21, "tx.commit_ok") {}
    /// tx.rollback.
    TxRollback = (90, 30, "tx.rollback") {}
    /// tx.rollback-ok.
    TxRollbackOk = (90, 31, "tx.rollback_ok") {}
}

impl Method {
    /// Whether a content header and body frames follow this method.
    pub fn carries_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_)
                | Method::BasicReturn(_)
                | Method::BasicDeliver(_)
                | Method::BasicGetOk(_)
        )
    }

    /// The class id alone.
    pub fn class_id(&self) -> u16 {
        self.ids().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_declare_packs_its_five_bits_into_one_octet() {
        let method = Method::QueueDeclare(QueueDeclare {
            queue: ShortString::from_static("q"),
            durable: true,
            auto_delete: true,
            no_wait: true,
            ..Default::default()
        });
        let mut buf = BytesMut::new();
        method.encode(&mut buf);
        assert_eq!(
            &buf[..],
            &[0, 50, 0, 10, 0, 0, 1, b'q', 0b0001_1010, 0, 0, 0, 0]
        );
        assert_eq!(Method::decode(buf.freeze()).unwrap(), method);
    }

    #[test]
    fn unknown_and_overlong_methods_are_errors() {
        assert_eq!(
            Method::decode(Bytes::from_static(&[0, 99, 0, 1])),
            Err(DecodeError::UnknownMethod {
                class_id: 99,
                method_id: 1
            })
        );
        assert_eq!(
            Method::decode(Bytes::from_static(&[0, 90, 0, 10, 7])),
            Err(DecodeError::TrailingBytes {
                method: "tx.select",
                count: 1
            })
        );
    }

    #[test]
    fn names_follow_rabbitmq() {
        assert_eq!(Method::name_of(60, 40), Some("basic.publish"));
        assert_eq!(
            Method::from(ConfirmSelect::default()).name(),
            "confirm.select"
        );
    }
}
