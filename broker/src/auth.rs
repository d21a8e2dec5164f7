//! Users, passwords, permissions and SASL.
//!
//! Passwords are stored as RabbitMQ stores them: a 4-byte random salt followed by the hash of
//! salt and password (`rabbit_password_hashing_sha256` for new passwords; SHA-512 and MD5
//! hashes from RabbitMQ exports are kept and checked as they are), so password hashes move
//! between RabbitMQ definitions files and Warren unchanged. Permissions are RabbitMQ's three regular
//! expressions per user and vhost (configure, write, read), matched anywhere in the resource
//! name as Erlang's `re:run` does; an empty pattern grants nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use parking_lot::RwLock;
use sha2::Sha256;
use warren_wire::{FieldTable, FieldValue};

use crate::error::AmqpError;

/// The SASL mechanisms offered in `connection.start`.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// The hash function of a stored password, as RabbitMQ names them (`hashing_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashingAlgorithm {
    /// `rabbit_password_hashing_sha256`, RabbitMQ's default and Warren's.
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    Sha512,
    /// `rabbit_password_hashing_md5`, from old RabbitMQ exports.
    Md5,
}

impl HashingAlgorithm {
    /// RabbitMQ's module name for it.
    pub fn name(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashingAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }

    /// Reads RabbitMQ's module name.
    pub fn parse(name: &str) -> Option<HashingAlgorithm> {
        [
            HashingAlgorithm::Sha256,
            HashingAlgorithm::Sha512,
            HashingAlgorithm::Md5,
        ]
        .into_iter()
        .find(|algorithm| algorithm.name() == name)
    }

    fn digest_len(self) -> usize {
        match self {
            HashingAlgorithm::Sha256 => 32,
            HashingAlgorithm::Sha512 => 64,
            HashingAlgorithm::Md5 => 16,
        }
    }

    fn digest(self, salt: &[u8; 4], password: &[u8]) -> Vec<u8> {
        fn run<D: sha2::Digest>(salt: &[u8; 4], password: &[u8]) -> Vec<u8> {
            let mut hasher = D::new();
            hasher.update(salt);
            hasher.update(password);
            hasher.finalize().to_vec()
        }
        match self {
            HashingAlgorithm::Sha256 => run::<Sha256>(salt, password),
            HashingAlgorithm::Sha512 => run::<sha2::Sha512>(salt, password),
            HashingAlgorithm::Md5 => run::<md5::Md5>(salt, password),
        }
    }
}

/// A salted password hash, laid out as RabbitMQ's `rabbit_password:hash/2` makes it: a 4-byte
/// random salt followed by the hash of salt and password. The digest's length tells the
/// algorithm apart (SHA-256 32 bytes, SHA-512 64, MD5 16), so a stored hash needs nothing
/// beside it.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    salt: [u8; 4],
    digest: Vec<u8>,
    algorithm: HashingAlgorithm,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

impl PasswordHash {
    /// Hashes `password` with SHA-256 and a fresh random salt.
    pub fn new(password: &str) -> PasswordHash {
        let salt = fastrand::u32(..).to_be_bytes();
        PasswordHash {
            salt,
            digest: HashingAlgorithm::Sha256.digest(&salt, password.as_bytes()),
            algorithm: HashingAlgorithm::Sha256,
        }
    }

    /// Whether `password` is the one hashed. Compares in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let candidate = self.algorithm.digest(&self.salt, password);
        candidate.len() == self.digest.len()
            && candidate
                .iter()
                .zip(self.digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The hash function.
    pub fn algorithm(&self) -> HashingAlgorithm {
        self.algorithm
    }

    /// RabbitMQ's `password_hash` form: base64 of salt and digest.
    pub fn to_base64(&self) -> String {
        let mut bytes = self.salt.to_vec();
        bytes.extend_from_slice(&self.digest);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Reads RabbitMQ's `password_hash` form, the algorithm told by its length.
    pub fn from_base64(text: &str) -> Option<PasswordHash> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        let algorithm = [
            HashingAlgorithm::Sha256,
            HashingAlgorithm::Sha512,
            HashingAlgorithm::Md5,
        ]
        .into_iter()
        .find(|algorithm| bytes.len() == 4 + algorithm.digest_len())?;
        PasswordHash::from_parts(&bytes, algorithm)
    }

    /// Reads a `password_hash` said to be of `algorithm`; `None` when its length does not fit.
    pub fn from_base64_as(text: &str, algorithm: HashingAlgorithm) -> Option<PasswordHash> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        PasswordHash::from_parts(&bytes, algorithm)
    }

    fn from_parts(bytes: &[u8], algorithm: HashingAlgorithm) -> Option<PasswordHash> {
        if bytes.len() != 4 + algorithm.digest_len() {
            return None;
        }
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&bytes[..4]);
        Some(PasswordHash {
            salt,
            digest: bytes[4..].to_vec(),
            algorithm,
        })
    }
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

    /// Every user, by name.
    pub fn all(&self) -> Vec<Arc<User>> {
        let mut users: Vec<Arc<User>> = self.users.read().values().cloned().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Every permission: user, vhost and the patterns, by user then vhost.
    pub fn all_permissions(&self) -> Vec<(String, String, Arc<Permission>)> {
        let mut all: Vec<(String, String, Arc<Permission>)> = self
            .permissions
            .read()
            .iter()
            .map(|((user, vhost), permission)| (user.clone(), vhost.clone(), permission.clone()))
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
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
        // RabbitMQ's layout (salt 01 02 03 04, then the hash of salt and "guest") for each
        // algorithm, computed by Python's hashlib.
        for (text, algorithm) in [
            (
                "AQIDBEMMOXwY6PKx/JKP9PAqfsb4ozuD0Ta3pxxa9gEYBMmD",
                HashingAlgorithm::Sha256,
            ),
            (
                "AQIDBANSvkE51MvG7pNDq4NjmP8SFay7rWsolg//30q7jnApCiuE049JxchapptDh7ryvu/VdvUXYHbwdpa9veVAv14=",
                HashingAlgorithm::Sha512,
            ),
            ("AQIDBH/JkOf0oGZ5yhQgSBXkHS0=", HashingAlgorithm::Md5),
            // RabbitMQ's own worked example of "guest" (salt 90 8d c6 0a).
            (
                "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe",
                HashingAlgorithm::Sha256,
            ),
            (
                "kI3GCrf65LdSkFyP8BVa8fB/67dDZ7ljrRF4WEjLDwWuHFxFQjgE88vc4EqLc8+dW4j5onKsGl4Ty32Icokl1iJrRxk=",
                HashingAlgorithm::Sha512,
            ),
            ("kI3GCsLphS59YDqYemSoxQGij64=", HashingAlgorithm::Md5),
        ] {
            let hash = PasswordHash::from_base64(text).unwrap();
            assert_eq!(hash.algorithm(), algorithm);
            assert!(hash.verify(b"guest"), "{algorithm:?}");
            assert!(!hash.verify(b"guesT"), "{algorithm:?}");
            assert_eq!(hash.to_base64(), text);
            assert!(PasswordHash::from_base64_as(text, algorithm).is_some());
        }
        let sha256 = "AQIDBEMMOXwY6PKx/JKP9PAqfsb4ozuD0Ta3pxxa9gEYBMmD";
        assert!(PasswordHash::from_base64_as(sha256, HashingAlgorithm::Sha512).is_none());
        assert_eq!(
            HashingAlgorithm::parse("rabbit_password_hashing_sha512"),
            Some(HashingAlgorithm::Sha512)
        );
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
