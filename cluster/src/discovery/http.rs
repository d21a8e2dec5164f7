//! A small HTTP/1.1 client for the backends that speak JSON over HTTP (etcd's v3 gateway,
//! Consul's agent API): one request per connection, `Content-Length` or chunked responses, TLS
//! (rustls, with the backend's `ssl_options`), through `cluster_formation.proxy.*` when set
//! (absolute URIs for HTTP, a `CONNECT` tunnel for HTTPS).

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use warren_config::{ProxyConfig, TlsSettings};

/// The largest response body read (discovery answers are small).
const MAX_BODY: usize = 16 << 20;

/// A request's answer.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The body as text, for error messages.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// TLS towards one server.
#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An HTTP client bound to one server.
#[derive(Clone)]
pub(crate) struct Client {
    host: String,
    port: u16,
    tls: Option<Tls>,
    /// The proxy to go through, if any.
    via_proxy: Option<(String, u16)>,
    timeout: Duration,
    headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Client {
    // Header values carry tokens: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("via_proxy", &self.via_proxy)
            .field("headers", &headers)
            .finish()
    }
}

/// Whether `url` says `https://`.
pub(crate) fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Splits `http://host:port`, `https://host:port`, `host:port` or `host` into host and port.
pub(crate) fn split_url(url: &str, default_port: u16) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    // [v6]:port, host:port, host
    if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{url}: unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| format!("{url}: bad port"))?,
            None => default_port,
        };
        return Ok((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse().map_err(|_| format!("{url}: bad port"))?,
        )),
        None => Ok((authority.to_string(), default_port)),
    }
}

/// Accepts any server certificate (`verify = verify_none`), still checking signatures.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client settings of `ssl_options` (keys named under `key`, such as
/// `cluster_formation.etcd.ssl_options`).
pub(crate) fn tls_config(tls: &TlsSettings, key: &str) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("{key}: {error}"))?;
    let builder = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.cacertfile {
            Some(path) => {
                let certificates = CertificateDer::pem_file_iter(path)
                    .map_err(|error| format!("{key}.cacertfile: {}: {error}", path.display()))?;
                for certificate in certificates {
                    let certificate = certificate.map_err(|error| {
                        format!("{key}.cacertfile: {}: {error}", path.display())
                    })?;
                    roots.add(certificate).map_err(|error| {
                        format!("{key}.cacertfile: {}: {error}", path.display())
                    })?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "{key}.cacertfile: {} holds no certificate",
                        path.display()
                    ));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    };
    let config = match (&tls.certfile, &tls.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let chain = CertificateDer::pem_file_iter(certfile)
                .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                .map_err(|error| format!("{key}.certfile: {}: {error}", certfile.display()))?;
            let private = PrivateKeyDer::from_pem_file(keyfile)
                .map_err(|error| format!("{key}.keyfile: {}: {error}", keyfile.display()))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|error| format!("{key}.certfile / keyfile: {error}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(format!("{key}.certfile and {key}.keyfile go together")),
    };
    Ok(Arc::new(config))
}

/// A connection, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Client {
    /// A client for `host:port` (TLS with `tls` when given), through the configured proxy
    /// unless `host` is excluded.
    pub(crate) fn new(
        host: &str,
        port: u16,
        tls: Option<(&Arc<ClientConfig>, &TlsSettings)>,
        proxy: &ProxyConfig,
    ) -> Result<Client, String> {
        let excluded = proxy.exclusions.iter().any(|excluded| {
            let excluded = excluded.to_ascii_lowercase();
            let host = host.to_ascii_lowercase();
            match excluded
                .strip_prefix("*.")
                .or_else(|| excluded.strip_prefix('.'))
            {
                Some(domain) => host == domain || host.ends_with(&format!(".{domain}")),
                None => host == excluded,
            }
        });
        let (setting, key) = match tls {
            Some(_) => (&proxy.https_proxy, "https_proxy"),
            None => (&proxy.http_proxy, "http_proxy"),
        };
        if let Some(proxy) = setting
            && proxy.contains('@')
        {
            return Err(format!(
                "cluster_formation.proxy.{key}: proxies that need credentials are not supported"
            ));
        }
        let via_proxy = match (setting, excluded) {
            (Some(proxy), false) => Some(
                split_url(proxy, 80)
                    .map_err(|error| format!("cluster_formation.proxy.{key}: {error}"))?,
            ),
            _ => None,
        };
        let tls = match tls {
            Some((config, settings)) => {
                let name = settings.server_name_indication.as_deref().unwrap_or(host);
                let name = ServerName::try_from(name.to_string())
                    .map_err(|error| format!("TLS server name '{name}': {error}"))?;
                Some(Tls {
                    config: config.clone(),
                    name,
                })
            }
            None => None,
        };
        Ok(Client {
            host: host.to_string(),
            port,
            tls,
            via_proxy,
            timeout: Duration::from_secs(15),
            headers: Vec::new(),
        })
    }

    /// Sends `name: value` with every request.
    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `host:port` of the server (`host` alone on the scheme's default port), as the `Host`
    /// header carries it.
    pub(crate) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Where TCP connects: `host:port`.
    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Sends a request with a JSON (or empty) body; `timeout` overrides the default.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, String> {
        let timeout = timeout.unwrap_or(self.timeout);
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let what = format!("{method} {}://{}{path}", self.scheme(), self.authority());
        let answer = tokio::time::timeout(timeout, self.exchange(method, path, &body)).await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(format!("{what}: {error}")),
            Err(_) => return Err(format!("{what}: no answer within {timeout:?}")),
        };
        tracing::debug!("{what} -> {}", response.status);
        Ok(response)
    }

    /// Connects to the server (through the proxy, in TLS when asked).
    async fn connect(&self) -> Result<Box<dyn Stream>, String> {
        let (connect_host, connect_port) = match &self.via_proxy {
            Some((host, port)) => (host.as_str(), *port),
            None => (self.host.as_str(), self.port),
        };
        let mut tcp = TcpStream::connect((connect_host, connect_port))
            .await
            .map_err(|error| error.to_string())?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        if self.via_proxy.is_some() {
            let authority = self.address();
            let connect = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
            tcp.write_all(connect.as_bytes())
                .await
                .map_err(|error| error.to_string())?;
            let mut reader = BufReader::new(&mut tcp);
            let line = read_limited_line(&mut reader).await?;
            let status = line.split_whitespace().nth(1).unwrap_or("");
            if !status.starts_with('2') {
                return Err(format!("the proxy refused to connect: {}", line.trim()));
            }
            read_headers(&mut reader).await?;
        }
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = connector
            .connect(tls.name.clone(), tcp)
            .await
            .map_err(|error| format!("TLS: {error}"))?;
        Ok(Box::new(stream))
    }

    async fn exchange(&self, method: &str, path: &str, body: &str) -> Result<Response, String> {
        let stream = self.connect().await?;
        let target = match (&self.via_proxy, &self.tls) {
            (Some(_), None) => format!("http://{}{path}", self.authority()),
            _ => path.to_string(),
        };
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: warren\r\n",
            self.authority()
        );
        for (name, value) in &self.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        request.push_str(body);
        let mut stream = BufReader::new(stream);
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        stream
            .get_mut()
            .flush()
            .await
            .map_err(|error| error.to_string())?;
        read_response(&mut stream).await
    }
}

/// The longest status, header or chunk-size line read.
const MAX_LINE: u64 = 16 * 1024;

/// Reads one line (at most [`MAX_LINE`] bytes); an empty string at the end of the stream.
async fn read_limited_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<String, String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|error| error.to_string())?;
    if read as u64 == MAX_LINE && line.last() != Some(&b'\n') {
        return Err("a line of the answer is too long".into());
    }
    String::from_utf8(line).map_err(|_| "the answer is not text".to_string())
}

/// Reads a status line, headers and body.
pub(crate) async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Response, String> {
    let line = read_limited_line(reader).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.trim()))?;
    let headers = read_headers(reader).await?;
    let response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let body = read_body(reader, &response.headers).await?;
    Ok(Response { body, ..response })
}

/// Reads header lines up to the empty line.
pub(crate) async fn read_headers<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    loop {
        let line = read_limited_line(reader).await?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        if headers.len() > 200 {
            return Err("too many headers".into());
        }
    }
}

/// Reads a body framed by `Content-Length`, chunked encoding, or the end of the connection.
pub(crate) async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    headers: &[(String, String)],
) -> Result<Vec<u8>, String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    let mut body = Vec::new();
    // The last transfer coding decides the framing (`gzip, chunked` is chunked).
    let chunked = header("transfer-encoding").is_some_and(|value| {
        value
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    });
    if chunked {
        loop {
            let size = read_limited_line(reader).await?;
            let size = size.trim().split(';').next().unwrap_or("");
            let size =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
            if size == 0 {
                let _ = read_headers(reader).await;
                return Ok(body);
            }
            if size > MAX_BODY - body.len() {
                return Err("response too large".into());
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader
                .read_exact(&mut body[start..])
                .await
                .map_err(|error| error.to_string())?;
            let mut crlf = [0u8; 2];
            reader
                .read_exact(&mut crlf)
                .await
                .map_err(|error| error.to_string())?;
        }
    }
    if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad Content-Length {length:?}"))?;
        if length > MAX_BODY {
            return Err("response too large".into());
        }
        body.resize(length, 0);
        reader
            .read_exact(&mut body)
            .await
            .map_err(|error| error.to_string())?;
        return Ok(body);
    }
    reader
        .take(MAX_BODY as u64)
        .read_to_end(&mut body)
        .await
        .map_err(|error| error.to_string())?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            split_url("http://etcd.local:2379", 80).unwrap(),
            ("etcd.local".to_string(), 2379)
        );
        assert_eq!(
            split_url("127.0.0.1:2379", 80).unwrap(),
            ("127.0.0.1".to_string(), 2379)
        );
        assert_eq!(
            split_url("proxy.local", 3128).unwrap(),
            ("proxy.local".to_string(), 3128)
        );
        assert_eq!(
            split_url("http://[::1]:8500/", 80).unwrap(),
            ("::1".to_string(), 8500)
        );
        assert_eq!(
            split_url("https://etcd:2379", 80).unwrap(),
            ("etcd".to_string(), 2379)
        );
        assert!(is_https("https://etcd:2379") && !is_https("etcd:2379"));
    }

    #[tokio::test]
    async fn hostile_answers_are_refused_without_panicking() {
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n";
        let error = read_response(&mut BufReader::new(&raw[..]))
            .await
            .unwrap_err();
        assert!(error.contains("too large"), "{error}");
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 20_000));
        let error = read_response(&mut BufReader::new(&long[..]))
            .await
            .unwrap_err();
        assert!(error.contains("too long"), "{error}");
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let response = read_response(&mut BufReader::new(&raw[..])).await.unwrap();
        assert_eq!(response.body, b"ok");
    }

    #[test]
    fn proxies_are_skipped_for_excluded_hosts_and_refused_with_credentials() {
        let proxy = ProxyConfig {
            http_proxy: Some("http://proxy.local:3128".into()),
            https_proxy: None,
            exclusions: vec!["169.254.169.254".into(), "*.internal".into()],
        };
        let via = |host: &str| Client::new(host, 80, None, &proxy).unwrap().via_proxy;
        assert_eq!(via("etcd.example"), Some(("proxy.local".to_string(), 3128)));
        assert_eq!(via("169.254.169.254"), None);
        assert_eq!(via("consul.service.internal"), None);
        let with_user = ProxyConfig {
            http_proxy: Some("http://user:pw@proxy.local:3128".into()),
            ..proxy.clone()
        };
        let error = Client::new("etcd.example", 80, None, &with_user).unwrap_err();
        assert!(
            error.contains("cluster_formation.proxy.http_proxy"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn chunked_and_sized_bodies_are_read() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        let mut reader = BufReader::new(&raw[..]);
        let response = read_response(&mut reader).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"Wikipedia");
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-Consul-Index: 7\r\n\r\nabcdef";
        let mut reader = BufReader::new(&raw[..]);
        let response = read_response(&mut reader).await.unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, b"abc");
        assert_eq!(response.headers[1], ("X-Consul-Index".into(), "7".into()));
    }
}
