//! Users, passwords, permissions and SASL.
//!
//! Passwords are stored as RabbitMQ stores them (`rabbit_password_hashing_sha256`): a 4-byte
//! random salt followed by SHA-256 of salt and password, so password hashes move between
//! RabbitMQ definitions files and Warren unchanged. Permissions are RabbitMQ's three regular
//! expressions per user and vhost (configure, write, read), matched anywhere in the resource
//! name as Erlang's `re:run` does; an empty pattern grants nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use warren_wire::{FieldTable, FieldValue};

use crate::error::AmqpError;

/// The SASL mechanisms offered in `connection.start`.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// A salted SHA-256 password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    salt: [u8; 4],
    digest: [u8; 32],
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &str) -> PasswordHash {
        let salt = fastrand::u32(..).to_be_bytes();
        PasswordHash {
            salt,
            digest: digest(&salt, password.as_bytes()),
        }
    }

    /// Whether `password` is the one hashed. Compares in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let candidate = digest(&self.salt, password);
        candidate
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// RabbitMQ's `password_hash` form: base64 of salt and digest.
    pub fn to_base64(&self) -> String {
        let mut bytes = self.salt.to_vec();
        bytes.extend_from_slice(&self.digest);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Reads RabbitMQ's `password_hash` form.
    pub fn from_base64(text: &str) -> Option<PasswordHash> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        if bytes.len() != 36 {
            return None;
        }
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&bytes[..4]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[4..]);
        Some(PasswordHash { salt, digest })
    }
}

fn digest(salt: &[u8; 4], password: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password);
    hasher.finalize().into()
}

/// A user.
#[derive(Debug, Clone)]
pub struct User {
    /// The name.
    pub name: String,
    /// The password hash; `None` for users that cannot log in with a password.
    pub password: Option<PasswordHash>,
    /// Tags such as `administrator` or `impersonator`.
    pub tags: Vec<String>,
}

impl User {
    /// Whether the user has a tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|existing| existing == tag)
    }
}

/// One permission pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    /// `None` when the pattern matches every name (`.*`), the common case, skipped cheaply.
    regex: Option<regex_lite::Regex>,
}

impl Pattern {
    /// Compiles a pattern; an empty pattern matches only the empty name, as in RabbitMQ.
    pub fn new(source: &str) -> Result<Pattern, String> {
        if source == ".*" {
            return Ok(Pattern {
                source: source.into(),
                regex: None,
            });
        }
        let effective = if source.is_empty() { "^$" } else { source };
        let regex = regex_lite::Regex::new(effective)
            .map_err(|error| format!("invalid regular expression '{source}': {error}"))?;
        Ok(Pattern {
            source: source.into(),
            regex: Some(regex),
        })
    }

    /// Whether the pattern matches somewhere in `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.regex.as_ref().is_none_or(|regex| regex.is_match(name))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// A user's permissions on one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    /// Declare and delete resources.
    pub configure: Pattern,
    /// Publish to exchanges, bind queues and exchanges as destinations.
    pub write: Pattern,
    /// Consume, get, purge, bind as source.
    pub read: Pattern,
}

/// Which permission an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `configure`
    Configure,
    /// `write`
    Write,
    /// `read`
    Read,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// The kind of resource an access check is about, for the error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
}

impl ResourceKind {
    fn name(self) -> &'static str {
        match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Exchange => "exchange",
        }
    }
}

/// Every user and permission of the node.
#[derive(Debug, Default)]
pub struct Users {
    users: RwLock<HashMap<String, Arc<User>>>,
    permissions: RwLock<HashMap<(String, String), Arc<Permission>>>,
}

/// Why a login failed; only logged, never sent (the client gets RabbitMQ's generic text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong password (deliberately not told apart).
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    /// A loopback-only user connected from elsewhere.
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
}

impl Users {
    /// Creates or replaces a user with a password.
    pub fn put_user(&self, name: &str, password: &str, tags: Vec<String>) -> Arc<User> {
        self.insert(User {
            name: name.into(),
            password: Some(PasswordHash::new(password)),
            tags,
        })
    }

    /// Creates or replaces a user.
    pub fn insert(&self, user: User) -> Arc<User> {
        let user = Arc::new(user);
        self.users.write().insert(user.name.clone(), user.clone());
        user
    }

    /// Sets a user's permissions on a vhost.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), String> {
        let permission = Permission {
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        };
        self.permissions
            .write()
            .insert((user.into(), vhost.into()), Arc::new(permission));
        Ok(())
    }

    /// Removes a user and its permissions.
    pub fn remove(&self, name: &str) {
        self.users.write().remove(name);
        self.permissions.write().retain(|(user, _), _| user != name);
    }

    /// Removes a user's permissions on a vhost.
    pub fn clear_permissions(&self, user: &str, vhost: &str) {
        self.permissions
            .write()
            .remove(&(user.into(), vhost.into()));
    }

    /// Looks a user up.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    /// Checks a password login.
    pub fn login(&self, name: &str, password: &[u8]) -> Result<Arc<User>, LoginError> {
        let user = self.user(name);
        let valid = match &user {
            Some(user) => user
                .password
                .as_ref()
                .is_some_and(|hash| hash.verify(password)),
            None => {
                // Spend the same effort for unknown users, so timing does not reveal them.
                PasswordHash::new("").verify(password);
                false
            }
        };
        match user {
            Some(user) if valid => Ok(user),
            _ => Err(LoginError::InvalidCredentials(name.into())),
        }
    }

    /// The user's permissions on a vhost, if any.
    pub fn permission(&self, user: &str, vhost: &str) -> Option<Arc<Permission>> {
        self.permissions
            .read()
            .get(&(user.to_string(), vhost.to_string()))
            .cloned()
    }
}

/// Checks `access` to a named resource; the error is RabbitMQ's text.
pub fn check_access(
    permission: &Permission,
    user: &str,
    vhost: &str,
    access: Access,
    kind: ResourceKind,
    name: &str,
) -> Result<(), AmqpError> {
    let pattern = match access {
        Access::Configure => &permission.configure,
        Access::Write => &permission.write,
        Access::Read => &permission.read,
    };
    if pattern.matches(name) {
        Ok(())
    } else {
        Err(AmqpError::access_refused(format!(
            "{} access to {} '{name}' in vhost '{vhost}' refused for user '{user}'",
            access.name(),
            kind.name()
        )))
    }
}

/// Whether an address is a loopback address (IPv4-mapped IPv6 included).
pub fn is_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A SASL response, parsed: user name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password bytes.
    pub password: Vec<u8>,
}

/// Why a SASL response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The mechanism is not offered.
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
    /// The response does not have the mechanism's form.
    #[error("response {0:?} invalid")]
    InvalidResponse(String),
}

/// Parses the response of `mechanism`.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<Credentials, SaslError> {
    let invalid = || {
        SaslError::InvalidResponse(
            String::from_utf8_lossy(response).replace(|c: char| c != '\0' && c.is_control(), "?"),
        )
    };
    match mechanism {
        // [authzid] NUL authcid NUL password
        "PLAIN" => {
            let mut parts = response.splitn(3, |byte| *byte == 0);
            let (Some(_authzid), Some(user), Some(password)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(invalid());
            };
            let user = String::from_utf8(user.to_vec()).map_err(|_| invalid())?;
            Ok(Credentials {
                user,
                password: password.to_vec(),
            })
        }
        // A field table's entries without the length prefix: LOGIN and PASSWORD.
        "AMQPLAIN" => {
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let (table, _) = FieldTable::decode(framed.into()).map_err(|_| invalid())?;
            let field = |name: &str| -> Option<Vec<u8>> {
                match table.get(name)? {
                    FieldValue::LongString(value) => Some(value.as_bytes().to_vec()),
                    FieldValue::ByteArray(value) => Some(value.to_vec()),
                    _ => None,
                }
            };
            let user = field("LOGIN")
                .and_then(|user| String::from_utf8(user).ok())
                .ok_or_else(invalid)?;
            let password = field("PASSWORD").ok_or_else(invalid)?;
            Ok(Credentials { user, password })
        }
        other => Err(SaslError::UnknownMechanism(other.into())),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use warren_wire::ShortString;

    use super::*;

    #[test]
    fn passwords_hash_and_verify_in_rabbitmq_form() {
        let hash = PasswordHash::new("secret");
        assert!(hash.verify(b"secret"));
        assert!(!hash.verify(b"Secret"));
        let restored = PasswordHash::from_base64(&hash.to_base64()).unwrap();
        assert!(restored.verify(b"secret"));
        // A hash produced by RabbitMQ (`rabbitmqctl hash_password guest` style) for "guest".
        let salt = [0x90, 0x8d, 0x4b, 0x1f];
        let mut bytes = salt.to_vec();
        bytes.extend_from_slice(&digest(&salt, b"guest"));
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert!(PasswordHash::from_base64(&text).unwrap().verify(b"guest"));
    }

    #[test]
    fn login_checks_user_and_password() {
        let users = Users::default();
        users.put_user("bob", "pw", vec![]);
        assert!(users.login("bob", b"pw").is_ok());
        assert_eq!(
            users.login("bob", b"nope").unwrap_err(),
            LoginError::InvalidCredentials("bob".into())
        );
        assert!(users.login("alice", b"pw").is_err());
    }

    #[test]
    fn permissions_use_unanchored_regular_expressions() {
        let users = Users::default();
        users
            .set_permissions("bob", "/", "^bob-", ".*", "")
            .unwrap();
        let permission = users.permission("bob", "/").unwrap();
        assert!(
            check_access(
                &permission,
                "bob",
                "/",
                Access::Configure,
                ResourceKind::Queue,
                "bob-q"
            )
            .is_ok()
        );
        let error = check_access(
            &permission,
            "bob",
            "/",
            Access::Configure,
            ResourceKind::Queue,
            "q",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "ACCESS_REFUSED - configure access to queue 'q' in vhost '/' refused for user 'bob'"
        );
        assert!(
            check_access(
                &permission,
                "bob",
                "/",
                Access::Write,
                ResourceKind::Exchange,
                "x"
            )
            .is_ok()
        );
        assert!(
            check_access(
                &permission,
                "bob",
                "/",
                Access::Read,
                ResourceKind::Queue,
                "x"
            )
            .is_err()
        );
        assert!(users.set_permissions("bob", "/", "(", ".*", ".*").is_err());
    }

    #[test]
    fn sasl_plain_and_amqplain() {
        assert_eq!(
            parse_response("PLAIN", b"\0guest\0guest").unwrap(),
            Credentials {
                user: "guest".into(),
                password: b"guest".to_vec()
            }
        );
        assert!(parse_response("PLAIN", b"guest").is_err());

        let mut table = FieldTable::new();
        table.insert(ShortString::from_static("LOGIN"), "bob".into());
        table.insert(ShortString::from_static("PASSWORD"), "pw".into());
        let mut buf = BytesMut::new();
        table.encode(&mut buf);
        let credentials = parse_response("AMQPLAIN", &buf[4..]).unwrap();
        assert_eq!(credentials.user, "bob");
        assert_eq!(credentials.password, b"pw");
        assert_eq!(
            parse_response("EXTERNAL", b"").unwrap_err(),
            SaslError::UnknownMechanism("EXTERNAL".into())
        );
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.2".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
    }
}
