//! Opening a connection: protocol header, `start`/`start-ok` with SASL, `tune`/`tune-ok`, `open`.
//!
//! ```text
//!  client                     server
//!  AMQP 0 0 9 1      ──>
//!                    <──      connection.start (properties, capabilities, mechanisms)
//!  start-ok          ──>      authenticate; refuse loopback-only users from elsewhere
//!                    <──      connection.tune (channel_max, frame_max, heartbeat)
//!  tune-ok           ──>      check the client stayed within the server's limits
//!  open (vhost)      ──>      check the vhost exists and the user may use it
//!                    <──      connection.open-ok
//! ```
//!
//! Failures follow RabbitMQ: a wrong protocol header gets the 0-9-1 header back and the socket
//! closed; a failed login gets `connection.close` 403 only if the client announced
//! `authentication_failure_close`, otherwise a closed socket; negotiation and vhost errors get
//! `connection.close` 530.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use warren_wire::method::{
    ConnectionClose, ConnectionOpen, ConnectionOpenOk, ConnectionStart, ConnectionStartOk,
    ConnectionTune, ConnectionTuneOk,
};
use warren_wire::{
    FieldTable, FieldValue, Frame, LongString, Method, PROTOCOL_HEADER, ReplyCode, ShortString,
};

use super::Transport;
use super::context::Capabilities;
use crate::auth::{self, LoginError, Permission, User};
use crate::broker::Broker;
use crate::error::AmqpError;
use crate::vhost::VHost;

/// How long a client has to complete the handshake (RabbitMQ's `handshake_timeout`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `close-ok` after refusing a connection.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);

/// What a successful handshake established.
#[derive(Debug)]
pub(crate) struct Session {
    pub user: Arc<User>,
    pub vhost: Arc<VHost>,
    pub permission: Arc<Permission>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub capabilities: Capabilities,
    pub client_properties: FieldTable,
    pub mechanism: String,
}

/// The `server-properties` of `connection.start`.
pub(crate) fn server_properties(broker: &Broker) -> FieldTable {
    let capabilities: FieldTable = [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ]
    .into_iter()
    .map(|name| (ShortString::from_static(name), FieldValue::Boolean(true)))
    .collect();
    let host = hostname();
    let text = |value: &str| FieldValue::from(value);
    let _ = broker;
    [
        ("capabilities", FieldValue::Table(capabilities)),
        ("cluster_name", text(&format!("warren@{host}"))),
        ("copyright", text("Copyright (c) 2026 The Warren authors")),
        (
            "information",
            text("Licensed under the Apache License 2.0. AMQP 0-9-1 as RabbitMQ 4 speaks it."),
        ),
        (
            "platform",
            text(&format!("Rust ({})", std::env::consts::OS)),
        ),
        ("product", text("Warren")),
        // The RabbitMQ version whose behaviour Warren implements: clients that gate features on
        // the broker version see one that has them.
        ("version", text("4.2.0")),
        ("warren_version", text(env!("CARGO_PKG_VERSION"))),
    ]
    .into_iter()
    .map(|(key, value)| (ShortString::from_static(key), value))
    .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Why the handshake ended without an open connection.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The socket closed, timed out or sent garbage; nothing more to say.
    Silent(String),
    /// Refused with a `connection.close` already sent.
    Closed(AmqpError),
}

pub(crate) async fn handshake(
    broker: &Arc<Broker>,
    transport: &mut Transport,
) -> Result<Session, Refusal> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let header = transport
        .read_protocol_header(deadline)
        .await
        .map_err(|reason| Refusal::Silent(format!("no protocol header: {reason}")))?;
    // RabbitMQ also accepts the 0-9 header and answers it as 0-9-1.
    if header != *PROTOCOL_HEADER && header != *b"AMQP\x01\x01\x00\x09" {
        transport.out.raw(PROTOCOL_HEADER);
        transport.out.close();
        return Err(Refusal::Silent(format!(
            "unsupported protocol header {:?}",
            String::from_utf8_lossy(&header)
        )));
    }

    transport.send(
        0,
        &Method::ConnectionStart(ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(broker),
            mechanisms: LongString::from(auth::MECHANISMS),
            locales: LongString::from("en_US"),
        }),
    );
    let start_ok = match transport.next_method(deadline).await? {
        Method::ConnectionStartOk(start_ok) => start_ok,
        other => {
            return Err(Refusal::Silent(format!(
                "expected connection.start_ok, got {}",
                other.name()
            )));
        }
    };
    let capabilities = Capabilities::from_client_properties(&start_ok.client_properties);
    let user = authenticate(broker, transport, &start_ok, capabilities).await?;

    let config = &broker.config;
    transport.send(
        0,
        &Method::ConnectionTune(ConnectionTune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
        }),
    );
    let tune_ok = match transport.next_method(deadline).await? {
        Method::ConnectionTuneOk(tune_ok) => tune_ok,
        other => {
            return Err(Refusal::Silent(format!(
                "expected connection.tune_ok, got {}",
                other.name()
            )));
        }
    };
    if let Err(error) = check_tune_ok(&tune_ok, config.frame_max, config.channel_max) {
        return Err(refuse(transport, error.with_ids((10, 30))).await);
    }
    let frame_max = if tune_ok.frame_max == 0 {
        config.frame_max
    } else {
        tune_ok.frame_max
    };
    let channel_max = if tune_ok.channel_max == 0 {
        config.channel_max
    } else {
        tune_ok.channel_max
    };

    let open = match transport.next_method_with(deadline, frame_max).await? {
        Method::ConnectionOpen(open) => open,
        other => {
            let error = AmqpError::channel_error("unexpected method in connection state opening")
                .during(&other);
            return Err(refuse(transport, error).await);
        }
    };
    let (vhost, permission) = match open_vhost(broker, &user, &open) {
        Ok(opened) => opened,
        Err(error) => return Err(refuse(transport, error.with_ids((10, 40))).await),
    };
    transport.send(
        0,
        &Method::ConnectionOpenOk(ConnectionOpenOk {
            known_hosts: ShortString::EMPTY,
        }),
    );
    Ok(Session {
        user,
        vhost,
        permission,
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        capabilities,
        mechanism: start_ok.mechanism.to_str_lossy().into_owned(),
        client_properties: start_ok.client_properties,
    })
}

async fn authenticate(
    broker: &Arc<Broker>,
    transport: &mut Transport,
    start_ok: &ConnectionStartOk,
    capabilities: Capabilities,
) -> Result<Arc<User>, Refusal> {
    let mechanism = start_ok.mechanism.to_str_lossy().into_owned();
    let credentials = match auth::parse_response(&mechanism, start_ok.response.as_bytes()) {
        Ok(credentials) => credentials,
        // RabbitMQ sends nothing for an unknown mechanism or a malformed response.
        Err(error) => return Err(Refusal::Silent(error.to_string())),
    };
    let login = broker
        .users
        .login(&credentials.user, &credentials.password)
        .and_then(|user| {
            if broker.is_loopback_only(&user.name) && !auth::is_loopback(transport.peer.ip()) {
                Err(LoginError::LoopbackOnly(user.name.clone()))
            } else {
                Ok(user)
            }
        });
    match login {
        Ok(user) => Ok(user),
        Err(reason) => {
            tracing::error!(
                "Error on AMQP connection {} (state: starting): {mechanism} login refused: {reason}",
                transport.name
            );
            if !capabilities.authentication_failure_close {
                transport.out.close();
                return Err(Refusal::Silent(reason.to_string()));
            }
            let error = AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ));
            Err(refuse(transport, error).await)
        }
    }
}

fn check_tune_ok(
    tune_ok: &ConnectionTuneOk,
    frame_max: u32,
    channel_max: u16,
) -> Result<(), AmqpError> {
    let fail = |field: &str, value: u64, detail: &str, direction: &str, limit: u64| {
        AmqpError::not_allowed(format!(
            "negotiated {field} = {value}{detail} is {direction} than the {} allowed value ({limit})",
            if direction == "lower" {
                "minimum"
            } else {
                "maximum"
            }
        ))
    };
    let min_frame = u64::from(warren_wire::frame::FRAME_MIN_SIZE);
    let client_frame = u64::from(tune_ok.frame_max);
    if client_frame != 0 && client_frame < min_frame {
        return Err(fail("frame_max", client_frame, "", "lower", min_frame));
    }
    if frame_max != 0 && (client_frame == 0 || client_frame > u64::from(frame_max)) {
        return Err(fail(
            "frame_max",
            client_frame,
            "",
            "higher",
            u64::from(frame_max),
        ));
    }
    let client_channels = u64::from(tune_ok.channel_max);
    if channel_max != 0 && (client_channels == 0 || client_channels > u64::from(channel_max)) {
        let detail = if client_channels == 0 {
            " (no limit)"
        } else {
            ""
        };
        return Err(fail(
            "channel_max",
            client_channels,
            detail,
            "higher",
            u64::from(channel_max),
        ));
    }
    Ok(())
}

fn open_vhost(
    broker: &Broker,
    user: &User,
    open: &ConnectionOpen,
) -> Result<(Arc<VHost>, Arc<Permission>), AmqpError> {
    let name = open.virtual_host.to_str_lossy();
    let vhost = broker
        .vhost(&name)
        .ok_or_else(|| AmqpError::not_allowed(format!("vhost {name} not found")))?;
    let permission = broker.users.permission(&user.name, &name).ok_or_else(|| {
        AmqpError::not_allowed(format!(
            "access to vhost '{name}' refused for user '{}'",
            user.name
        ))
    })?;
    Ok((vhost, permission))
}

/// Sends `connection.close` for `error`, waits briefly for `close-ok`, and closes the socket.
pub(crate) async fn refuse(transport: &mut Transport, error: AmqpError) -> Refusal {
    transport.send(
        0,
        &Method::ConnectionClose(ConnectionClose {
            reply_code: error.code.code(),
            reply_text: error.reply_text(),
            class_id: error.class_id,
            method_id: error.method_id,
        }),
    );
    transport.out.flush();
    let deadline = Instant::now() + CLOSE_OK_TIMEOUT;
    loop {
        match transport
            .next_frame(deadline, warren_wire::frame::FRAME_MIN_SIZE)
            .await
        {
            Ok(Frame::Method {
                method: Method::ConnectionCloseOk(_),
                ..
            })
            | Err(_) => break,
            Ok(_) => continue,
        }
    }
    transport.out.close();
    debug_assert!(error.code != ReplyCode::ReplySuccess);
    Refusal::Closed(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tune_ok_limits_and_texts_follow_rabbitmq() {
        let tune = |frame_max, channel_max| ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat: 60,
        };
        assert!(check_tune_ok(&tune(131_072, 2047), 131_072, 2047).is_ok());
        assert!(check_tune_ok(&tune(8192, 1), 131_072, 2047).is_ok());
        let cases = [
            (
                tune(4096, 2047),
                "NOT_ALLOWED - negotiated frame_max = 4096 is lower than the minimum allowed value (8192)",
            ),
            (
                tune(0, 2047),
                "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)",
            ),
            (
                tune(200_000, 2047),
                "NOT_ALLOWED - negotiated frame_max = 200000 is higher than the maximum allowed value (131072)",
            ),
            (
                tune(131_072, 0),
                "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
            ),
            (
                tune(131_072, 4000),
                "NOT_ALLOWED - negotiated channel_max = 4000 is higher than the maximum allowed value (2047)",
            ),
        ];
        for (tune_ok, text) in cases {
            assert_eq!(
                check_tune_ok(&tune_ok, 131_072, 2047)
                    .unwrap_err()
                    .to_string(),
                text
            );
        }
    }
}
