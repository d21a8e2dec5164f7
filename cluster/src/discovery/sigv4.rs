//! AWS Signature Version 4 for the Query APIs the AWS backend calls (EC2, Auto Scaling), and the
//! little XML reading their answers need.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::secret::hmac_sha256 as hmac;

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key ID.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_key: String,
    /// For temporary credentials (instance roles).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// RFC 3986 percent-encoding, as SigV4 wants it (unreserved characters kept).
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for a time.
pub fn amz_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The canonical query string of `parameters`.
pub fn canonical_query(parameters: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = parameters
        .iter()
        .map(|(key, value)| (encode(key), encode(value)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The headers that sign a `GET /?<query>` request to `host` at `amz_date` (`x-amz-date`,
/// `x-amz-security-token` when temporary, `Authorization`).
pub fn sign_get(
    credentials: &Credentials,
    region: &str,
    service: &str,
    host: &str,
    query: &str,
    amz_date: &str,
) -> Vec<(String, String)> {
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let mut headers = vec![
        ("host", host.to_string()),
        ("x-amz-date", amz_date.to_string()),
    ];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{}\n", value.trim()))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");
    let payload = hex(&Sha256::digest(b""));
    let canonical = format!("GET\n/\n{query}\n{canonical_headers}\n{signed_headers}\n{payload}");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    let mut signed: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(name, _)| *name != "host")
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    signed.push((
        "Authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            credentials.access_key_id
        ),
    ));
    signed
}

/// An XML element: its name (without namespace prefix), text and children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) name: String,
    pub(crate) text: String,
    pub(crate) children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    /// The children named `name`.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The text at a path of child names.
    pub(crate) fn text_at(&self, path: &[&str]) -> Option<&str> {
        let mut element = self;
        for name in path {
            element = element.child(name)?;
        }
        Some(element.text.as_str()).filter(|text| !text.is_empty())
    }
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Parses an XML document into its root element (declarations, comments and attributes are
/// skipped).
pub(crate) fn parse_xml(document: &str) -> Result<Element, String> {
    let mut stack: Vec<Element> = vec![Element::default()];
    let mut rest = document;
    while let Some(start) = rest.find('<') {
        let text = rest[..start].trim();
        if !text.is_empty()
            && let Some(top) = stack.last_mut()
        {
            top.text.push_str(&unescape(text));
        }
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            rest = &after[end + 3..];
            continue;
        }
        let end = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let element = stack.pop().ok_or("unbalanced closing tag")?;
            let local = name.trim().rsplit(':').next().unwrap_or(name);
            if element.name != local {
                return Err(format!("</{local}> closes <{}>", element.name));
            }
            stack
                .last_mut()
                .ok_or("unbalanced closing tag")?
                .children
                .push(element);
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name = tag
            .trim_end_matches('/')
            .split_whitespace()
            .next()
            .ok_or("empty tag")?;
        let element = Element {
            name: name.rsplit(':').next().unwrap_or(name).to_string(),
            ..Element::default()
        };
        if self_closing {
            stack
                .last_mut()
                .ok_or("unbalanced tag")?
                .children
                .push(element);
        } else {
            stack.push(element);
        }
    }
    let mut document = stack.pop().ok_or("empty document")?;
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    document
        .children
        .pop()
        .ok_or_else(|| "no root element".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// AWS's SigV4 test suite, `get-vanilla`.
    #[test]
    fn signatures_match_the_aws_test_suite() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let headers = sign_get(
            &credentials,
            "us-east-1",
            "service",
            "example.amazonaws.com",
            "",
            "20150830T123600Z",
        );
        let authorization = &headers.last().unwrap().1;
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn dates_and_queries_are_canonical() {
        let time = UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160);
        assert_eq!(amz_date(time), "20150830T123600Z");
        let query = canonical_query(&[
            ("Filter.1.Value.1".into(), "a b/c".into()),
            ("Action".into(), "DescribeInstances".into()),
        ]);
        assert_eq!(query, "Action=DescribeInstances&Filter.1.Value.1=a%20b%2Fc");
    }

    #[test]
    fn xml_answers_are_read() {
        let document = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <reservationSet><item><instancesSet>
    <item><instanceId>i-1</instanceId><privateDnsName>ip-10-0-0-1.ec2.internal</privateDnsName></item>
    <item><instanceId>i-2</instanceId><privateDnsName/><tagSet/></item>
  </instancesSet></item></reservationSet>
  <nextToken>a&amp;b</nextToken>
</DescribeInstancesResponse>"#;
        let root = parse_xml(document).unwrap();
        assert_eq!(root.name, "DescribeInstancesResponse");
        let instances: Vec<&Element> = root
            .child("reservationSet")
            .unwrap()
            .all("item")
            .flat_map(|reservation| reservation.child("instancesSet").unwrap().all("item"))
            .collect();
        assert_eq!(instances.len(), 2);
        assert_eq!(
            instances[0].text_at(&["privateDnsName"]),
            Some("ip-10-0-0-1.ec2.internal")
        );
        assert_eq!(instances[1].text_at(&["privateDnsName"]), None);
        assert_eq!(root.text_at(&["nextToken"]), Some("a&b"));
        assert!(parse_xml("<a><b></a>").is_err());
    }
}
